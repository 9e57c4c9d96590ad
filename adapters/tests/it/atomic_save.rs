//! Atomic saves: a crash at any step never leaves a half adapter under the final name.

use std::io;

use tailor_adapters::peft::{self, LoadOptions, SaveStep};
use tailor_adapters::{LoraAdapter, Target};

use crate::common::{list, random_adapter, rng, TempDir};

fn crash_at(step: SaveStep) -> impl FnMut(SaveStep) -> io::Result<()> {
    move |s| if s == step { Err(io::Error::other("simulated crash")) } else { Ok(()) }
}

fn two_versions() -> (LoraAdapter, LoraAdapter) {
    let (mut rng, _) = rng();
    (
        random_adapter(&mut rng, 2, 4.0, &[Target::Q]),
        random_adapter(&mut rng, 4, 8.0, &[Target::V, Target::Up]),
    )
}

#[test]
fn crash_before_any_rename_keeps_the_old_adapter() {
    let (v1, v2) = two_versions();
    let tmp = TempDir::new("crash-written");
    let dir = tmp.path().join("ad");
    peft::save(&v1, &dir).unwrap();
    let e = peft::save_with_hook(&v2, &dir, &mut crash_at(SaveStep::Written)).unwrap_err();
    assert!(e.to_string().contains("simulated crash"), "{e}");
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v1, "the old adapter still loads");
    assert_eq!(list(tmp.path()).len(), 2, "a stray temporary directory, as after a kill");
    assert!(!peft::recover(&dir).unwrap());
    assert_eq!(list(tmp.path()), ["ad"]);
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v1);
}

#[test]
fn crash_between_renames_is_recovered_to_the_new_adapter() {
    let (v1, v2) = two_versions();
    let tmp = TempDir::new("crash-aside");
    let dir = tmp.path().join("ad");
    peft::save(&v1, &dir).unwrap();
    peft::save_with_hook(&v2, &dir, &mut crash_at(SaveStep::OldMovedAside)).unwrap_err();
    // The final name is absent (never half-written); both versions are complete beside it.
    assert!(matches!(
        peft::load(&dir, &LoadOptions::new()),
        Err(tailor_adapters::Error::NotFound { .. })
    ));
    assert!(peft::recover(&dir).unwrap());
    assert_eq!(list(tmp.path()), ["ad"]);
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v2);
}

#[test]
fn crash_after_the_swap_keeps_the_new_adapter() {
    let (v1, v2) = two_versions();
    let tmp = TempDir::new("crash-inplace");
    let dir = tmp.path().join("ad");
    peft::save(&v1, &dir).unwrap();
    peft::save_with_hook(&v2, &dir, &mut crash_at(SaveStep::NewInPlace)).unwrap_err();
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v2);
    assert!(!peft::recover(&dir).unwrap());
    assert_eq!(list(tmp.path()), ["ad"]);
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v2);
}

#[test]
fn crash_on_first_save_leaves_nothing_under_the_name() {
    let (v1, _) = two_versions();
    let tmp = TempDir::new("crash-first");
    let dir = tmp.path().join("ad");
    peft::save_with_hook(&v1, &dir, &mut crash_at(SaveStep::Written)).unwrap_err();
    assert!(!dir.exists());
    assert!(!peft::recover(&dir).unwrap());
    assert!(list(tmp.path()).is_empty());
    // And the hook is not called with OldMovedAside when there was nothing to move.
    let mut steps = Vec::new();
    peft::save_with_hook(&v1, &dir, &mut |s| {
        steps.push(s);
        Ok(())
    })
    .unwrap();
    assert_eq!(steps, [SaveStep::Written, SaveStep::NewInPlace]);
    assert_eq!(peft::load(&dir, &LoadOptions::new()).unwrap(), v1);
}
