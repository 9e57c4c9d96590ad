//! Retrieval quality with the real embedder: 20 personal facts, 20 questions about them in
//! other words; the right fact must be in the top 3 for at least 19.

use std::sync::Arc;

use tailor_memory::{MemoryConfig, MemoryStore, NewMemory, SearchQuery};

use crate::common::*;

const FACTS: [(&str, &str); 20] = [
    ("My daughter Mia was born on the 3rd of March 2019.", "When is my kid's birthday?"),
    ("I'm allergic to shellfish, especially shrimp.", "Is there any seafood I should avoid eating?"),
    ("I work as a nurse in the night shift at St. Mary's hospital.", "What's my job?"),
    ("My car is a blue 2015 Toyota Corolla.", "What vehicle do I drive?"),
    ("I moved to Vancouver from Manila in 2021.", "Which country did I originally come from?"),
    ("My partner's name is Daniel and he's a carpenter.", "Who am I in a relationship with?"),
    ("I'm training for the Berlin marathon in September.", "What race am I preparing for?"),
    ("I don't drink alcohol at all.", "Should you suggest a wine pairing for my dinner?"),
    ("My favourite author is Ursula K. Le Guin.", "Whose novels do I like reading most?"),
    ("I have a golden retriever called Biscuit.", "What kind of pet do I own?"),
    ("I'm learning to play the cello, lessons on Tuesdays.", "Which instrument am I studying?"),
    ("My blood type is O negative.", "What's my blood group?"),
    ("I prefer answers in bullet points, short and direct.", "How do I like responses formatted?"),
    ("I'm vegetarian since 2016, but I eat eggs and cheese.", "Do I eat meat?"),
    ("My mother lives in Cebu and I call her every Sunday.", "When do I usually phone my mom?"),
    ("I graduated in mechanical engineering from UBC.", "What did I study at university?"),
    ("My rent is 2,100 dollars a month, due on the first.", "How much do I pay for my apartment?"),
    ("I get migraines when I don't sleep enough.", "What health problem do I have with poor rest?"),
    ("I'm saving up for a trip to Japan next spring.", "Where do I plan to travel?"),
    ("My phone is a Pixel 8 and I hate iPhones.", "Which smartphone do I use?"),
];

#[test]
fn twenty_facts_nineteen_found_in_top_three() {
    let dir = tmp_dir("quality");
    let mut s = MemoryStore::open(dir.join("p.db"), minilm() as Arc<_>, MemoryConfig::default()).unwrap();
    let ids: Vec<i64> = s.add_many(FACTS.iter().map(|(f, _)| NewMemory::new(*f)).collect()).unwrap().iter().map(|o| o.id).collect();
    assert_eq!(s.len().unwrap(), 20, "no fact merged into another");
    let mut found = 0;
    for ((fact, question), id) in FACTS.iter().zip(&ids) {
        let hits = s.search(&SearchQuery::new(*question, 3)).unwrap();
        let ok = hits.iter().any(|h| h.memory.id == *id);
        found += ok as usize;
        eprintln!("{} {question} -> {:?}{}", if ok { "ok  " } else { "MISS" }, hits.first().map(|h| &h.memory.text), if ok { String::new() } else { format!(" (wanted {fact:?})") });
    }
    eprintln!("top-3 retrieval: {found}/20");
    assert!(found >= 19, "only {found}/20 facts in the top 3");
}
