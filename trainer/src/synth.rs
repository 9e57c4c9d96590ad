//! Synthetic user facts, made up by rules from a seed: the training data of the memory-reading
//! adapter (see `tailor::memory`) and of the reading examples mixed into personal training.
//!
//! Every fact has a canonical question, the answer in the second person (what the model should
//! say) and the forms a memory of it takes in a prompt: a mirrored correction
//! (`Q: <question> A: <answer>`), the user's own statement in the first person ("My cat is
//! called Tavik.") or the answer itself. Names are made of random syllables, so the base
//! model cannot know them and must read them from the prompt.

use crate::rng::Rng;

/// One made-up fact about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SynthFact {
    /// What the category is (facts of one category make hard distractors for each other).
    pub category: &'static str,
    /// The canonical question ("What is my cat's name?").
    pub question: String,
    /// The user's statement of it ("My cat is called Tavik.").
    pub statement: String,
    /// The answer the model should give ("Your cat is called Tavik.").
    pub answer: String,
    /// The word an answer must contain to be right ("Tavik").
    pub keyword: String,
}

impl SynthFact {
    /// The memory as [`tailor_memory`] mirrors a correction of it.
    pub fn correction_memory(&self, asked: &str) -> String {
        format!("Q: {} A: {}", asked.trim(), self.answer)
    }
}

const SYLLABLES: [&str; 40] = [
    "ka", "ri", "mo", "ta", "vel", "dor", "zi", "lun", "pra", "bex", "sol", "thi", "nar", "quo", "fen", "ga", "lis", "mor", "ven",
    "tu", "cal", "dri", "ew", "o", "an", "bru", "sky", "ja", "po", "rel", "ix", "ul", "hai", "ner", "wo", "sti", "mae", "gro", "ly",
    "zan",
];

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[(rng.next_u64() % xs.len() as u64) as usize]
}

/// A made-up name of 2–3 syllables, capitalised.
fn made_up_name(rng: &mut Rng) -> String {
    let n = 2 + (rng.next_u64() % 2) as usize;
    let s: String = (0..n).map(|_| pick(rng, &SYLLABLES)).collect();
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

const NAMED: [&str; 30] = [
    "cat", "dog", "rabbit", "parrot", "hamster", "horse", "goldfish", "tortoise", "sister", "brother", "mother", "father",
    "best friend", "boss", "neighbour", "grandmother", "grandfather", "son", "daughter", "wife", "husband", "cousin", "uncle",
    "aunt", "teacher", "doctor", "dentist", "boat", "bike", "guitar",
];

const FAVOURITES: [(&str, &[&str]); 12] = [
    ("colour", &["teal", "maroon", "lilac", "ochre", "turquoise", "crimson", "mustard yellow", "olive green", "navy blue", "coral"]),
    ("food", &["lasagne", "sushi", "paella", "dumplings", "falafel", "risotto", "tacos", "pierogi", "ramen", "moussaka"]),
    ("fruit", &["mango", "kiwi", "papaya", "lychee", "fig", "pomegranate", "apricot", "guava", "plum", "cherry"]),
    ("drink", &["ginger beer", "green tea", "espresso", "lemonade", "hot chocolate", "kombucha", "mint tea", "apple juice"]),
    ("sport", &["badminton", "rowing", "fencing", "curling", "water polo", "handball", "squash", "climbing", "judo"]),
    ("season", &["autumn", "spring", "winter", "summer"]),
    ("animal", &["otter", "red panda", "axolotl", "hedgehog", "octopus", "lynx", "pangolin", "puffin", "capybara"]),
    ("flower", &["tulip", "peony", "orchid", "daffodil", "lavender", "sunflower", "magnolia", "iris", "camellia"]),
    ("dessert", &["tiramisu", "baklava", "cheesecake", "crème brûlée", "apple crumble", "mochi", "pavlova", "churros"]),
    ("board game", &["chess", "backgammon", "Scrabble", "Go", "Carcassonne", "mahjong", "checkers"]),
    ("subject", &["geology", "astronomy", "history", "chemistry", "linguistics", "botany", "statistics"]),
    ("instrument", &["cello", "oboe", "banjo", "harp", "trombone", "ukulele", "accordion", "flute"]),
];

const JOBS: [&str; 20] = [
    "beekeeper", "pharmacist", "carpenter", "nurse", "architect", "librarian", "pilot", "baker", "plumber", "translator",
    "veterinarian", "geologist", "firefighter", "florist", "electrician", "journalist", "dentist", "tailor", "chef", "surveyor",
];
const MONTHS: [&str; 12] =
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
const ALLERGIES: [&str; 10] = ["peanuts", "shellfish", "cats", "pollen", "penicillin", "strawberries", "dust", "wasps", "latex", "sesame"];
const LANGUAGES: [&str; 12] =
    ["Portuguese", "Finnish", "Tagalog", "Welsh", "Swahili", "Hungarian", "Korean", "Greek", "Dutch", "Polish", "Turkish", "Czech"];
const HOBBIES: [&str; 12] = [
    "pottery", "birdwatching", "knitting", "rock climbing", "origami", "gardening", "fishing", "chess", "painting", "baking",
    "archery", "sailing",
];
const CAR_MAKES: [&str; 10] = ["Volvo", "Toyota", "Skoda", "Fiat", "Subaru", "Renault", "Mazda", "Peugeot", "Kia", "Saab"];
const COLOURS: [&str; 8] = ["red", "blue", "green", "silver", "black", "white", "yellow", "grey"];

/// A city name: made up half of the time, so that the answer has to be read.
fn city(rng: &mut Rng) -> String {
    const REAL: [&str; 12] = ["Tromsø", "Porto", "Lyon", "Bergen", "Kraków", "Valencia", "Ghent", "Tampere", "Graz", "Cork", "Aarhus", "Bari"];
    if rng.next_u64().is_multiple_of(2) { pick(rng, &REAL).to_string() } else { made_up_name(rng) }
}

/// `n` facts drawn from `seed` (the same seed gives the same facts).
pub fn facts(seed: u64, n: usize) -> Vec<SynthFact> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| fact(&mut rng)).collect()
}

fn fact(rng: &mut Rng) -> SynthFact {
    let f = |category, q: String, s: String, a: String, k: String| SynthFact { category, question: q, statement: s, answer: a, keyword: k };
    match rng.next_u64() % 12 {
        0..=3 => {
            let who = pick(rng, &NAMED);
            let name = made_up_name(rng);
            f("name", format!("What is my {who}'s name?"), format!("My {who} is called {name}."), format!("Your {who} is called {name}."), name)
        }
        4 | 5 => {
            let (thing, pool) = FAVOURITES[(rng.next_u64() % FAVOURITES.len() as u64) as usize];
            let v = pick(rng, pool);
            f(
                "favourite",
                format!("What is my favourite {thing}?"),
                format!("My favourite {thing} is {v}."),
                format!("Your favourite {thing} is {v}."),
                v.to_string(),
            )
        }
        6 => {
            let c = city(rng);
            match rng.next_u64() % 4 {
                0 => f("place", "Where do I live?".into(), format!("I live in {c}."), format!("You live in {c}."), c),
                1 => f("place", "Where did I grow up?".into(), format!("I grew up in {c}."), format!("You grew up in {c}."), c),
                2 => f("place", "Where was I born?".into(), format!("I was born in {c}."), format!("You were born in {c}."), c),
                _ => {
                    let co = format!("{} Labs", made_up_name(rng));
                    f("place", "Where do I work?".into(), format!("I work at {co}."), format!("You work at {co}."), co)
                }
            }
        }
        7 => {
            let j = pick(rng, &JOBS);
            let art = if j.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            f("job", "What do I do for a living?".into(), format!("I work as {art} {j}."), format!("You are {art} {j}."), j.to_string())
        }
        8 => {
            let (c, m) = (pick(rng, &COLOURS), pick(rng, &CAR_MAKES));
            f("car", "What car do I drive?".into(), format!("I drive a {c} {m}."), format!("You drive a {c} {m}."), m.to_string())
        }
        9 => match rng.next_u64() % 4 {
            0 => {
                let n = 2 + rng.next_u64() % 97;
                f("number", "What is my lucky number?".into(), format!("My lucky number is {n}."), format!("Your lucky number is {n}."), n.to_string())
            }
            1 => {
                let n = 18 + rng.next_u64() % 70;
                f("number", "How old am I?".into(), format!("I am {n} years old."), format!("You are {n} years old."), n.to_string())
            }
            2 => {
                let n = 1 + rng.next_u64() % 6;
                f("number", "How many children do I have?".into(), format!("I have {n} children."), format!("You have {n} children."), n.to_string())
            }
            _ => {
                let n = 100 + rng.next_u64() % 900;
                f("number", "What is my room number?".into(), format!("My room number is {n}."), format!("Your room number is {n}."), n.to_string())
            }
        },
        10 => {
            let (m, d) = (pick(rng, &MONTHS), 1 + rng.next_u64() % 28);
            f("date", "When is my birthday?".into(), format!("My birthday is on {m} {d}."), format!("Your birthday is on {m} {d}."), m.to_string())
        }
        _ => match rng.next_u64() % 3 {
            0 => {
                let a = pick(rng, &ALLERGIES);
                f("health", "What am I allergic to?".into(), format!("I am allergic to {a}."), format!("You are allergic to {a}."), a.to_string())
            }
            1 => {
                let l = pick(rng, &LANGUAGES);
                f("language", "What language do I speak at home?".into(), format!("I speak {l} at home."), format!("You speak {l} at home."), l.to_string())
            }
            _ => {
                let h = pick(rng, &HOBBIES);
                f("hobby", "What is my hobby?".into(), format!("My hobby is {h}."), format!("Your hobby is {h}."), h.to_string())
            }
        },
    }
}

/// `n` general questions made by templates from `seed` (none of them about the user), for the
/// examples where the memories in the prompt are irrelevant and the answer must stay the base
/// model's own.
pub fn general_questions(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    const COUNTRIES: [&str; 16] = [
        "Canada", "Kenya", "Peru", "Norway", "Vietnam", "Chile", "Poland", "Morocco", "Sweden", "Greece", "Mexico", "Ireland",
        "Portugal", "Thailand", "Argentina", "Finland",
    ];
    const TOPICS: [&str; 16] = [
        "photosynthesis", "the moon", "rainbows", "the Roman Empire", "volcanoes", "honey bees", "the internet", "glaciers",
        "electricity", "the heart", "tides", "dinosaurs", "clouds", "bread", "magnets", "the Nile",
    ];
    const TASKS: [&str; 10] = [
        "make a cup of tea", "plant a tree", "tie a tie", "write a good email", "learn to swim", "save money", "fall asleep faster",
        "clean a window", "start running", "cook rice",
    ];
    (0..n)
        .map(|_| match rng.next_u64() % 5 {
            0 => format!("What is the capital of {}?", pick(rng, &COUNTRIES)),
            1 => format!("Tell me about {}.", pick(rng, &TOPICS)),
            2 => format!("How do I {}?", pick(rng, &TASKS)),
            3 => format!("Explain {} in one sentence.", pick(rng, &TOPICS)),
            _ => format!("Write one sentence about {}.", pick(rng, &TOPICS)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_well_formed_and_varied() {
        let facts = facts(7, 300);
        for f in &facts {
            assert!(f.answer.contains(&f.keyword), "{f:?}");
            assert!(f.statement.contains(&f.keyword), "{f:?}");
            assert!(f.question.ends_with('?'));
            assert!(f.correction_memory(&f.question).starts_with("Q: "));
        }
        let mut cats: Vec<&str> = facts.iter().map(|f| f.category).collect();
        cats.sort_unstable();
        cats.dedup();
        assert!(cats.len() >= 8, "{cats:?}");
        let mut answers: Vec<&str> = facts.iter().map(|f| f.answer.as_str()).collect();
        answers.sort_unstable();
        answers.dedup();
        assert!(answers.len() > 200);
        assert_eq!(general_questions(1, 5), general_questions(1, 5));
        assert_eq!(super::facts(3, 4), super::facts(3, 4));
    }
}
