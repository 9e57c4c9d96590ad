//! [`PersonalOptions`] from a JSON object: the one reading of a run's settings that the
//! bindings share (the C ABI's `options_json`, the Python package's `train(**options)`).

use crate::personal::PersonalOptions;
use crate::{Error, TrainConfig};

impl PersonalOptions {
    /// Keys of [`PersonalOptions::from_json`] that are the profile run's own; every other key
    /// is a [`TrainConfig`] field.
    pub const JSON_KEYS: [&'static str; 13] = [
        "held_out_every",
        "max_general_increase",
        "checkpoint_every",
        "replay",
        "paraphrases",
        "max_paraphrases",
        "memory_examples",
        "held_out_per_question",
        "distill",
        "distill_tokens",
        "max_specificity_loss",
        "preference_sft",
        "min_steps",
    ];

    /// The defaults with `given` applied: a key of [`Self::JSON_KEYS`] sets that field
    /// (`max_specificity_loss: null` switches the specificity check off), any other key a field
    /// of `train`. An unknown key, a value of the wrong type or `held_out_every: 0` is
    /// [`Error::InvalidConfig`] naming the key.
    pub fn from_json(given: serde_json::Map<String, serde_json::Value>) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        let mut o = PersonalOptions::default();
        let serde_json::Value::Object(mut train) = serde_json::to_value(&o.train).map_err(|e| invalid(e.to_string()))? else {
            return Err(invalid("the training settings are not a JSON object".into()));
        };
        for (key, value) in given {
            fn set<T: serde::de::DeserializeOwned>(slot: &mut T, key: &str, value: serde_json::Value) -> Result<(), Error> {
                *slot = serde_json::from_value(value).map_err(|e| Error::InvalidConfig { reason: format!("`{key}`: {e}") })?;
                Ok(())
            }
            match key.as_str() {
                "held_out_every" => set(&mut o.held_out_every, &key, value)?,
                "max_general_increase" => set(&mut o.max_general_increase, &key, value)?,
                "checkpoint_every" => set(&mut o.checkpoint_every, &key, value)?,
                "replay" => set(&mut o.replay, &key, value)?,
                "paraphrases" => set(&mut o.paraphrases, &key, value)?,
                "max_paraphrases" => set(&mut o.max_paraphrases, &key, value)?,
                "memory_examples" => set(&mut o.memory_examples, &key, value)?,
                "held_out_per_question" => set(&mut o.held_out_per_question, &key, value)?,
                "distill" => set(&mut o.distill, &key, value)?,
                "distill_tokens" => set(&mut o.distill_tokens, &key, value)?,
                "max_specificity_loss" => set(&mut o.max_specificity_loss, &key, value)?,
                "preference_sft" => set(&mut o.preference_sft, &key, value)?,
                "min_steps" => set(&mut o.min_steps, &key, value)?,
                k if train.contains_key(k) => {
                    train.insert(key, value);
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option `{key}` (known: {}, and the training settings {})",
                        Self::JSON_KEYS.join(", "),
                        train.keys().cloned().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
        o.train = serde_json::from_value::<TrainConfig>(serde_json::Value::Object(train)).map_err(|e| invalid(e.to_string()))?;
        if o.held_out_every == 0 {
            return Err(invalid("`held_out_every` must be at least 1".into()));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<PersonalOptions, Error> {
        let serde_json::Value::Object(m) = serde_json::from_str(json).unwrap() else { panic!("an object") };
        PersonalOptions::from_json(m)
    }

    #[test]
    fn keys_set_their_fields_and_the_rest_is_refused_by_name() {
        let o = parse(r#"{"distill": 7, "max_specificity_loss": null, "learning_rate": 0.01, "epochs": 3}"#).unwrap();
        assert_eq!((o.distill, o.max_specificity_loss, o.train.learning_rate, o.train.epochs), (7, None, 0.01, 3));
        assert_eq!(o.max_paraphrases, PersonalOptions::default().max_paraphrases, "unnamed keys keep the defaults");
        let e = parse(r#"{"no_such_key": 1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown option `no_such_key`") && e.contains("held_out_every"), "{e}");
        assert!(parse(r#"{"distill": "many"}"#).unwrap_err().to_string().contains("`distill`"));
        assert!(parse(r#"{"held_out_every": 0}"#).unwrap_err().to_string().contains("held_out_every"));
        assert!(matches!(parse(r#"{"epochs": -1}"#), Err(Error::InvalidConfig { .. })));
    }
}
