//! Everyday topics of personal facts, for knowledge augmentation ([`crate::augment`]).
//!
//! Templates read off a question's grammar ("what is my X" → "tell me my X") cannot reach the
//! other words people use for the same fact: "where did I grow up" is also "what is my
//! hometown", "what is my job" also "what do I do for work". A personal assistant is asked
//! about a small, well-known set of topics (work, home, family, pets, dates, health, tastes,
//! habits), so each topic here lists the words that reveal it and the everyday questions that
//! ask for it, split like the templates into training questions and held-out ones (asked only
//! by the evaluation gate, never trained on).
//!
//! A topic matches when one of its cues occurs, as whole words, in the corrected question or
//! its answer. Only the questions are rewritten: the answer stays the user's own correction.
//! Written for Tailor from common knowledge of what people tell assistants; none of the lists
//! is taken from an evaluation set (the personalization bench reports how many of its
//! questions the augmentation happens to generate word for word).

/// One topic: cue phrases (lowercase, matched as whole words), training questions, held-out
/// questions.
pub(crate) struct Topic {
    /// A name for tests and debugging.
    #[cfg_attr(not(test), allow(dead_code))]
    pub name: &'static str,
    pub cues: &'static [&'static str],
    pub train: &'static [&'static str],
    pub held_out: &'static [&'static str],
}

/// The topics, most specific first (a question matches at most [`MAX_TOPICS`] of them).
pub(crate) const TOPICS: &[Topic] = &[
    Topic {
        name: "birthplace",
        cues: &["born in", "birthplace", "place of birth", "where was i born", "city was i born", "town was i born"],
        train: &["What is my place of birth?", "What is my birthplace?", "In what city was I born?", "What town was I born in?"],
        held_out: &["Where do I come from originally, by birth?", "Which place was I born in?"],
    },
    Topic {
        name: "birthday",
        cues: &["birthday", "date of birth", "born on", "when was i born", "day was i born", "date was i born"],
        train: &["When is my birthday?", "When was I born?", "What is my date of birth?", "On what date was I born?", "When do I celebrate my birthday?"],
        held_out: &["What day do I have my birthday?", "Which date is my birthday on?"],
    },
    Topic {
        name: "hometown",
        cues: &["grow up", "grew up", "hometown", "home town", "am i from", "raised", "where i'm from", "where i am from"],
        train: &["Where did I grow up?", "Where am I from?", "Where was I raised?", "Which town did I grow up in?", "What place did I grow up in?"],
        held_out: &["In which town did I spend my childhood?", "Where is my hometown?"],
    },
    Topic {
        name: "home",
        cues: &["live in", "where do i live", "my address", "i live", "you live in", "my home"],
        train: &["Where do I live?", "What is my address?", "Which city do I live in?", "Where is my home?", "Where do I live now?"],
        held_out: &["In which place do I live?", "Where is my house?"],
    },
    Topic {
        name: "workplace",
        cues: &["work at", "work for", "employer", "workplace", "where do i work", "company", "office"],
        train: &["Where do I work?", "Who do I work for?", "What company do I work at?", "Where is my job?", "What is my workplace?", "Who employs me?"],
        held_out: &["At which company am I employed?", "Where am I working?"],
    },
    Topic {
        name: "job",
        cues: &["job", "profession", "occupation", "for a living", "work as", "career", "what do i do"],
        train: &["What is my job?", "What do I do for work?", "What is my occupation?", "What is my profession?", "What do I work as?", "What kind of work do I do?", "How do I make a living?"],
        held_out: &["What job do I have?", "What is my line of work?"],
    },
    Topic {
        name: "car",
        cues: &["car", "drive", "vehicle"],
        train: &["What car do I drive?", "What car do I have?", "What vehicle do I drive?", "What kind of car do I own?", "Which car is mine?"],
        held_out: &["What do I drive?", "What kind of car is mine?"],
    },
    Topic {
        name: "allergy",
        cues: &["allergic", "allergy", "allergies"],
        train: &["What am I allergic to?", "What is my allergy?", "What allergies do I have?", "Am I allergic to anything?", "What can't I eat because of my allergy?", "Which allergy do I have?"],
        held_out: &["What should I avoid because of an allergy?", "Tell me about my allergy."],
    },
    Topic {
        name: "exercise",
        cues: &["gym", "work out", "workout", "exercise", "training day"],
        train: &["When do I go to the gym?", "Which day do I work out?", "When do I exercise?", "What day do I go to the gym?", "When is my workout?", "When is my gym session?"],
        held_out: &["On which day do I exercise?", "When do I train at the gym?"],
    },
    Topic {
        name: "pet",
        cues: &["pet", "pets", "tortoise", "hamster", "parrot", "rabbit", "animal"],
        train: &["What pet do I have?", "Do I have a pet?", "What animal do I have?", "What kind of pet do I own?", "Tell me about my pet."],
        held_out: &["Which pet do I keep?", "What is my pet?"],
    },
    Topic {
        name: "partner",
        cues: &["wife", "husband", "partner", "spouse", "married", "girlfriend", "boyfriend"],
        train: &["Who is my partner?", "Who am I married to?", "What is my partner's name?", "Who is my spouse?", "Who do I live with?"],
        held_out: &["Who is the person I am with?", "Tell me who my partner is."],
    },
    Topic {
        name: "children",
        cues: &["children", "kids", "son", "daughter", "child"],
        train: &["Do I have children?", "What are my children's names?", "How many kids do I have?", "Who are my kids?", "Tell me about my children."],
        held_out: &["What are my kids called?", "Who are my children?"],
    },
    Topic {
        name: "language",
        cues: &["language", "languages", "speak", "native tongue"],
        train: &["What language do I speak?", "Which languages do I speak?", "What is my native language?", "What is my mother tongue?"],
        held_out: &["Which language is mine?", "What do I speak at home?"],
    },
    Topic {
        name: "hobby",
        cues: &["hobby", "hobbies", "free time", "for fun", "pastime", "spare time"],
        train: &["What is my hobby?", "What do I do for fun?", "What do I do in my free time?", "What are my hobbies?", "What is my favourite pastime?"],
        held_out: &["How do I spend my spare time?", "What do I like doing for fun?"],
    },
    Topic {
        name: "diet",
        cues: &["vegetarian", "vegan", "diet", "gluten", "don't eat", "do not eat"],
        train: &["What is my diet?", "What do I eat?", "Do I eat meat?", "What food can't I eat?", "What kind of diet do I follow?"],
        held_out: &["Which diet am I on?", "What should I not be served?"],
    },
    Topic {
        name: "study",
        cues: &["study", "studied", "university", "college", "degree", "school", "major"],
        train: &["What did I study?", "Where did I study?", "What is my degree?", "Which university did I go to?", "What was my major?"],
        held_out: &["What did I learn at university?", "Which school did I attend?"],
    },
    Topic {
        name: "age",
        cues: &["how old", "my age", "years old"],
        train: &["How old am I?", "What is my age?", "What age am I?", "How many years old am I?"],
        held_out: &["Tell me my age.", "How old did I say I am?"],
    },
    Topic {
        name: "number",
        cues: &["lucky number", "favourite number", "favorite number"],
        train: &["What is my lucky number?", "Which number is my lucky one?", "What number do I think is lucky?", "Tell me my lucky number."],
        held_out: &["What number brings me luck?", "Which number is lucky for me?"],
    },
];

/// At most this many topics contribute to one question.
pub(crate) const MAX_TOPICS: usize = 2;

/// Whether `phrase` occurs in `text` (both lowercase) as whole words.
fn has_phrase(text: &str, phrase: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find(phrase) {
        let s = from + i;
        let e = s + phrase.len();
        let left = s == 0 || !bytes[s - 1].is_ascii_alphanumeric();
        let right = e == bytes.len() || !bytes[e].is_ascii_alphanumeric();
        if left && right {
            return true;
        }
        from = s + 1;
        while !text.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// The topics a corrected `question` with its `answer` is about, most specific first.
pub(crate) fn topics_of(question: &str, answer: &str) -> Vec<&'static Topic> {
    let text = format!("{} {}", question, answer).to_lowercase().replace('’', "'").replace(['?', '.', '!', ','], " ");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    TOPICS.iter().filter(|t| t.cues.iter().any(|c| has_phrase(&text, c))).take(MAX_TOPICS).collect()
}

/// "Which colour do I like best?" forms of a `favourite <thing>` attribute (a rule, not a
/// topic: any liked thing is asked about this way).
pub(crate) fn favourite_forms(np: &str) -> (Vec<String>, Vec<String>) {
    let thing = np.strip_prefix("favourite ").or_else(|| np.strip_prefix("favorite "));
    let Some(thing) = thing.filter(|t| !t.is_empty()) else { return (Vec::new(), Vec::new()) };
    let train = vec![
        format!("Which {thing} do I like the most?"),
        format!("What {thing} do I like most?"),
        format!("What {thing} do I love?"),
        format!("Which {thing} do I prefer?"),
        format!("What is the {thing} I like best?"),
    ];
    let held = vec![format!("Which {thing} is my favourite one?"), format!("What {thing} do I enjoy the most?")];
    (train, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_match_whole_words_only() {
        assert!(has_phrase("what car do i drive", "car"));
        assert!(!has_phrase("what is my career", "car"));
        assert!(has_phrase("what is my career", "career"));
        assert!(!has_phrase("my carpet", "pet"));
        assert!(has_phrase("ørsted pet", "pet"));
    }

    #[test]
    fn questions_find_their_topics() {
        let names = |q: &str, a: &str| topics_of(q, a).iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names("Where did I grow up?", "You grew up in Tromsø."), ["hometown"]);
        assert_eq!(names("What is my job?", "You are a beekeeper."), ["job"]);
        assert_eq!(names("What car do I drive?", "You drive a red Volvo."), ["car"]);
        assert_eq!(names("What city was I born in?", "You were born in Gdańsk."), ["birthplace"]);
        assert!(names("What is my cat's name?", "Your cat is called Zorblax.").is_empty());
        assert!(names("Tell me a joke.", "Why did the chicken cross the road?").is_empty());
    }

    #[test]
    fn every_topic_keeps_train_and_held_out_apart() {
        for t in TOPICS {
            assert!(t.train.len() >= 4 && t.held_out.len() >= 2, "{}", t.name);
            for h in t.held_out {
                assert!(!t.train.iter().any(|x| x.eq_ignore_ascii_case(h)), "{}: {h}", t.name);
            }
            for c in t.cues {
                assert_eq!(*c, c.to_lowercase(), "{}: cues are lowercase", t.name);
            }
        }
        let (train, held) = favourite_forms("favourite colour");
        assert!(train.contains(&"Which colour do I like the most?".to_string()));
        assert!(!held.iter().any(|h| train.contains(h)));
        assert!(favourite_forms("lucky number").0.is_empty());
    }
}
