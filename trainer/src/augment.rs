//! Knowledge augmentation: one correction becomes many training questions.
//!
//! A fact a small model sees in one phrasing is memorised but not extractable from another
//! (Allen-Zhu & Li, "Physics of Language Models 3.1"; Ovadia et al. 2023): the same question
//! asked differently gets the old answer. So a corrected question is rewritten, by rules that
//! need no model, into the forms people ask it in:
//!
//! - a *frame* is read off the question (or, failing that, off the corrected answer): "what
//!   is my X", "what is my X called / my X's name", "where did I ...", "tell me my X", ...;
//! - each frame has question templates, split into two disjoint families: [`Paraphrases::train`]
//!   (what the adapter is trained on) and [`Paraphrases::held_out`] (what the evaluation gate
//!   asks: never a copy of a training item);
//! - the everyday topic a fact is about ([`crate::topics`]: work, home, family, dates, ...)
//!   adds the other words people ask it with ("where did I grow up" → "where am I from");
//! - any question, framed or not, is also wrapped in everyday openers and closers
//!   ("Quick question: ...", "... Do you remember?").
//!
//! Paraphrases written by the base model itself were tried on SmolLM2-135M and left out: at
//! this size they drift from the question's meaning more often than they add a new form.

/// Training and held-out rewrites of one question.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Paraphrases {
    /// The question as asked first, then the training rewrites (no duplicates).
    pub train: Vec<String>,
    /// Rewrites for the gate: none of them is in `train`.
    pub held_out: Vec<String>,
}

/// What a question asks about, as far as the rules can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Frame {
    /// "What is my cat's name?": the name of `my <noun>`.
    NameOf { noun: String },
    /// "What is my favourite colour?" / "Who is my dentist?": `<wh> is my <np>`.
    Attribute { wh: String, np: String },
    /// "Where did I grow up?" / "What car do I drive?": `<wh> <aux> I <rest>`.
    DoSupport { wh: String, aux: String, rest: String },
    /// Anything else: only wrappers apply.
    Other,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(|w| w.to_string()).collect()
}

/// The question without its closing punctuation, with one space between words.
fn core(q: &str) -> String {
    let q = q.trim().trim_end_matches(['?', '.', '!', ' ']).trim();
    words(q).join(" ")
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        // "I" stays capital ("where did I ...").
        Some(f) if s.starts_with("I ") => f.to_string() + c.as_str(),
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

const WH: [&str; 7] = ["what", "who", "where", "which", "when", "how", "whom"];

/// Reads a frame off `question`, else off `answer`.
fn frame(question: &str, answer: &str) -> Frame {
    let f = frame_of_question(question);
    if f != Frame::Other {
        return f;
    }
    frame_of_answer(answer)
}

fn strip_possessive(w: &str) -> Option<&str> {
    w.strip_suffix("'s").or_else(|| w.strip_suffix("’s"))
}

fn frame_of_question(question: &str) -> Frame {
    let c = core(question).replace('’', "'");
    let lc = c.to_lowercase();
    let w: Vec<&str> = lc.split(' ').collect();
    let orig: Vec<&str> = c.split(' ').collect();
    if w.is_empty() {
        return Frame::Other;
    }
    // "... my <noun>'s name", "... the name of my <noun>", "... my <noun> called".
    if let Some(i) = w.iter().position(|x| *x == "my") {
        let rest = &orig[i + 1..];
        let rest_l = &w[i + 1..];
        if rest_l.len() >= 2 && rest_l[rest_l.len() - 1] == "name" {
            if let Some(n) = strip_possessive(rest[rest.len() - 2]) {
                let mut noun: Vec<&str> = rest[..rest.len() - 2].to_vec();
                noun.push(n);
                return Frame::NameOf { noun: noun.join(" ") };
            }
        }
        if i >= 3 && w[i - 3..i] == ["the", "name", "of"] && !rest.is_empty() {
            return Frame::NameOf { noun: rest.join(" ") };
        }
        if rest_l.len() >= 2 && rest_l[rest_l.len() - 1] == "called" && matches!(w[0], "what" | "what's") {
            let noun = &rest[..rest.len() - 1];
            let noun: Vec<&str> = if noun.last().map(|x| x.to_lowercase()) == Some("is".into()) { noun[..noun.len() - 1].to_vec() } else { noun.to_vec() };
            if !noun.is_empty() {
                return Frame::NameOf { noun: noun.join(" ") };
            }
        }
        // "<wh> is/are my <np>" and "<wh>'s my <np>".
        let (wh, cop_ok) = match w[0] {
            "what's" => ("what", i == 1),
            "who's" => ("who", i == 1),
            "where's" => ("where", i == 1),
            x if WH.contains(&x) => (x, i == 2 && matches!(w[1], "is" | "are" | "was")),
            _ => ("", false),
        };
        if cop_ok && !rest.is_empty() {
            return Frame::Attribute { wh: wh.to_string(), np: rest.join(" ") };
        }
        // "Tell me my <np>" / "Tell me what my <np> is".
        if w[0] == "tell" && w.get(1) == Some(&"me") && i == 2 && !rest.is_empty() {
            return Frame::Attribute { wh: "what".into(), np: rest.join(" ") };
        }
    }
    // "<wh ...> do/does/did I <rest>".
    if let Some(i) = w.iter().position(|x| *x == "i") {
        if i >= 2 && WH.contains(&w[0]) && matches!(w[i - 1], "do" | "did" | "does") && i + 1 < w.len() {
            return Frame::DoSupport {
                wh: orig[..i - 1].join(" ").to_lowercase(),
                aux: w[i - 1].to_string(),
                rest: orig[i + 1..].join(" "),
            };
        }
    }
    Frame::Other
}

/// "Your cat is called Zorblax." → the name of "cat"; "Your favourite colour is teal." → what
/// my favourite colour is.
fn frame_of_answer(answer: &str) -> Frame {
    let c = core(answer);
    let w: Vec<&str> = c.split(' ').collect();
    if w.len() < 3 || !w[0].eq_ignore_ascii_case("your") {
        return Frame::Other;
    }
    let Some(v) = w.iter().position(|x| matches!(*x, "is" | "are" | "was")) else { return Frame::Other };
    if v < 2 {
        return Frame::Other;
    }
    let np = w[1..v].join(" ");
    if w.get(v + 1).is_some_and(|x| matches!(*x, "called" | "named")) {
        return Frame::NameOf { noun: np };
    }
    if let Some(n) = np.strip_suffix("'s name").or_else(|| np.strip_suffix("’s name")) {
        return Frame::NameOf { noun: n.to_string() };
    }
    Frame::Attribute { wh: "what".into(), np }
}

fn templated(frame: &Frame) -> (Vec<String>, Vec<String>) {
    let t = |xs: &[&str], f: &dyn Fn(&str) -> String| xs.iter().map(|x| f(x)).collect::<Vec<_>>();
    match frame {
        Frame::NameOf { noun } => {
            let train = [
                "What is my {n}'s name?",
                "What's my {n} called?",
                "What is the name of my {n}?",
                "Tell me my {n}'s name.",
                "What is my {n} called?",
                "Do you know my {n}'s name?",
                "What did I name my {n}?",
                "Remind me what my {n} is called.",
                "Can you tell me what my {n} is called?",
                "My {n}'s name, what is it?",
                "What name does my {n} have?",
                "Who is my {n}?",
            ];
            let held = ["Do you remember what my {n} is called?", "Any idea what my {n}'s name is?", "Please remind me of the name of my {n}."];
            let f = |x: &str| x.replace("{n}", noun);
            (t(&train, &f), t(&held, &f))
        }
        Frame::Attribute { wh, np } => {
            let whc = upper_first(wh);
            let train = [
                "{W} is my {np}?",
                "{W}'s my {np}?",
                "Tell me my {np}.",
                "Do you know my {np}?",
                "Can you tell me {w} my {np} is?",
                "Remind me of my {np}.",
                "Do you know {w} my {np} is?",
                "My {np}: {w} is it?",
                "I forgot my {np}. {W} is it?",
                "What do you know about my {np}?",
            ];
            let held = ["Do you remember {w} my {np} is?", "Any idea {w} my {np} is?", "Please remind me: {w} is my {np}?"];
            let f = |x: &str| x.replace("{W}", &whc).replace("{w}", wh).replace("{np}", np);
            (t(&train, &f), t(&held, &f))
        }
        Frame::DoSupport { wh, aux, rest } => {
            let whc = upper_first(wh);
            let train = [
                "{W} {aux} I {rest}?",
                "Tell me {w} I {restp}.",
                "Can you tell me {w} I {restp}?",
                "Do you know {w} I {restp}?",
                "Remind me {w} I {restp}.",
                "{W} {aux} I {rest}, do you know?",
            ];
            let held = ["Do you remember {w} I {restp}?", "Any idea {w} I {restp}?", "Please remind me: {w} {aux} I {rest}?"];
            // "what car do I drive" → "what car I drive"; "where did I grow up" → "where I did
            // grow up" is wrong English, so the past keeps the question form instead.
            let restp = match aux.as_str() {
                "do" => rest.clone(),
                "does" => rest.clone(),
                _ => String::new(),
            };
            let f = |x: &str| {
                if restp.is_empty() && x.contains("{restp}") {
                    return String::new();
                }
                x.replace("{W}", &whc).replace("{w}", wh).replace("{aux}", aux).replace("{restp}", &restp).replace("{rest}", rest)
            };
            let keep = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect();
            (keep(t(&train, &f)), keep(t(&held, &f)))
        }
        Frame::Other => (Vec::new(), Vec::new()),
    }
}

/// Everyday wrappers of a question: training ones and held-out ones (disjoint).
fn wrapped(q: &str) -> (Vec<String>, Vec<String>) {
    let c = core(q);
    let l = lower_first(&c);
    let train = vec![
        format!("Quick question: {l}?"),
        format!("Remind me, {l}?"),
        format!("{c}? Do you remember?"),
        format!("Hey, {l}?"),
        format!("I forgot. {c}?"),
        format!("{c}? Tell me briefly."),
    ];
    let held = vec![format!("Sorry, I can't recall: {l}?"), format!("{c}? I told you before.")];
    (train, held)
}

/// The training and held-out rewrites of `question` whose corrected answer is `answer`.
/// `question` itself is always the first training item.
pub fn paraphrase(question: &str, answer: &str) -> Paraphrases {
    let fr = frame(question, answer);
    // Other words for the same fact first (everyday topics, "which X do I like best"), then
    // the grammatical rewrites, then the wrappers: a cap on the count cuts wrappers first.
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for t in crate::topics::topics_of(question, answer) {
        train.extend(t.train.iter().map(|q| q.to_string()));
        held.extend(t.held_out.iter().map(|q| q.to_string()));
    }
    if let Frame::Attribute { np, .. } = &fr {
        let (t, h) = crate::topics::favourite_forms(&np.to_lowercase());
        train.extend(t);
        held.extend(h);
    }
    let (tt, th) = templated(&fr);
    train.extend(tt);
    held.extend(th);
    let (wt, wh) = wrapped(question);
    train.extend(wt);
    held.extend(wh);
    // Wrap one framed form too, so wrappers are not tied to the user's own wording.
    if let Some(first) = train.first().cloned().filter(|_| fr != Frame::Other) {
        let c = lower_first(&core(&first));
        train.push(format!("Quick question: {c}?"));
    }
    let mut out = Paraphrases { train: vec![question.trim().to_string()], held_out: Vec::new() };
    let norm = |s: &str| core(s).to_lowercase().replace('’', "'");
    let mut seen: Vec<String> = vec![norm(question)];
    for q in train {
        let n = norm(&q);
        if !n.is_empty() && !seen.contains(&n) {
            seen.push(n);
            out.train.push(q);
        }
    }
    for q in held {
        let n = norm(&q);
        if !n.is_empty() && !seen.contains(&n) {
            seen.push(n);
            out.held_out.push(q);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_off_common_questions() {
        assert_eq!(frame_of_question("What is my cat's name?"), Frame::NameOf { noun: "cat".into() });
        assert_eq!(frame_of_question("What's my cat called?"), Frame::NameOf { noun: "cat".into() });
        assert_eq!(frame_of_question("What is the name of my best friend?"), Frame::NameOf { noun: "best friend".into() });
        assert_eq!(frame_of_question("What is my favourite colour?"), Frame::Attribute { wh: "what".into(), np: "favourite colour".into() });
        assert_eq!(frame_of_question("Who's my dentist?"), Frame::Attribute { wh: "who".into(), np: "dentist".into() });
        assert_eq!(
            frame_of_question("Where did I grow up?"),
            Frame::DoSupport { wh: "where".into(), aux: "did".into(), rest: "grow up".into() }
        );
        assert_eq!(
            frame_of_question("What car do I drive?"),
            Frame::DoSupport { wh: "what car".into(), aux: "do".into(), rest: "drive".into() }
        );
        assert_eq!(frame_of_question("Tell me a joke."), Frame::Other);
        assert_eq!(frame_of_answer("Your dog is called Biscuit."), Frame::NameOf { noun: "dog".into() });
        assert_eq!(frame_of_answer("Your lucky number is 7."), Frame::Attribute { wh: "what".into(), np: "lucky number".into() });
        assert_eq!(frame_of_answer("You are a beekeeper."), Frame::Other);
    }

    #[test]
    fn rewrites_start_with_the_question_and_never_overlap() {
        for (q, a) in [
            ("What is my cat's name?", "Your cat is called Zorblax."),
            ("Where did I grow up?", "You grew up in Tromsø."),
            ("What car do I drive?", "You drive a red Volvo."),
            ("What do I do for a living?", "You are a beekeeper."),
            ("Tell me a joke.", "Why did the chicken cross the road?"),
        ] {
            let p = paraphrase(q, a);
            assert_eq!(p.train[0], q);
            assert!(p.train.len() >= 6, "{q}: {:?}", p.train);
            assert!(p.held_out.len() >= 2, "{q}: {:?}", p.held_out);
            for h in &p.held_out {
                assert!(!p.train.iter().any(|t| t.eq_ignore_ascii_case(h)), "{h} is also a training item");
            }
            for t in p.train.iter().chain(&p.held_out) {
                assert!(!t.contains('{') && !t.contains("  "), "{t}");
            }
        }
        let p = paraphrase("What car do I drive?", "You drive a red Volvo.");
        assert!(p.train.contains(&"Can you tell me what car I drive?".to_string()), "{:?}", p.train);
        let p = paraphrase("What is my cat's name?", "Your cat is called Zorblax.");
        assert!(p.train.contains(&"What is the name of my cat?".to_string()));
    }
}
