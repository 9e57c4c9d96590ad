//! `cargo bench -p tailor --bench memory_qa`
//!
//! Stores 20 personal facts in a fresh profile (real SQLite file, real MiniLM embedder), asks
//! the real model 20 questions about them in other words, greedy, with memory off and on, and
//! counts the answers that state the fact (a keyword of the fact in the answer, case-
//! insensitive). Also reports how often retrieval itself put the fact in the top 3.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tailor::profile::{BertEmbedder, MemoryConfig, MemoryStore, NewMemory, SearchQuery};
use tailor::{ChatMessage, Engine, EngineConfig, Flow, GenerateParams, MemoryPromptConfig, ModelCache, Prompt};

/// (fact, question in other words, keywords: any of them in the answer counts).
const FACTS: [(&str, &str, &[&str]); 20] = [
    ("My daughter Mia was born on the 3rd of March 2019.", "When is my kid's birthday?", &["march", "3rd", "mia"]),
    ("I'm allergic to shellfish, especially shrimp.", "Is there any seafood I should avoid eating?", &["shellfish", "shrimp"]),
    ("I work as a nurse in the night shift at St. Mary's hospital.", "What's my job?", &["nurse"]),
    ("My car is a blue 2015 Toyota Corolla.", "What vehicle do I drive?", &["toyota", "corolla"]),
    ("I moved to Vancouver from Manila in 2021.", "Which city did I originally come from?", &["manila"]),
    ("My partner's name is Daniel and he's a carpenter.", "Who am I in a relationship with?", &["daniel"]),
    ("I'm training for the Berlin marathon in September.", "What race am I preparing for?", &["berlin", "marathon"]),
    ("I don't drink alcohol at all.", "Should you suggest a wine pairing for my dinner?", &["alcohol", "don't drink", "do not drink", "non-alcoholic"]),
    ("My favourite author is Ursula K. Le Guin.", "Whose novels do I like reading most?", &["le guin", "ursula"]),
    ("I have a golden retriever called Biscuit.", "What is the name of my dog?", &["biscuit"]),
    ("I'm learning to play the cello, lessons on Tuesdays.", "Which instrument am I studying?", &["cello"]),
    ("My blood type is O negative.", "What's my blood group?", &["o negative", "o-negative", "o-"]),
    ("I prefer answers in bullet points, short and direct.", "How do I like responses formatted?", &["bullet"]),
    ("I'm vegetarian since 2016, but I eat eggs and cheese.", "Do I eat meat?", &["vegetarian", "no, you", "you don't"]),
    ("My mother lives in Cebu and I call her every Sunday.", "When do I usually phone my mom?", &["sunday"]),
    ("I graduated in mechanical engineering from UBC.", "What did I study at university?", &["mechanical"]),
    ("My rent is 2,100 dollars a month, due on the first.", "How much do I pay for my apartment?", &["2,100", "2100"]),
    ("I get migraines when I don't sleep enough.", "What health problem do I have with poor rest?", &["migraine"]),
    ("I'm saving up for a trip to Japan next spring.", "Where do I plan to travel?", &["japan"]),
    ("My phone is a Pixel 8 and I hate iPhones.", "Which smartphone do I use?", &["pixel"]),
];

fn main() -> anyhow::Result<()> {
    let root = std::env::var_os("TAILOR_HOME").map(PathBuf::from).or_else(ModelCache::default_root).expect("a cache dir");
    let cache = ModelCache::new(root);
    let model = std::env::var_os("TAILOR_MODEL").map(PathBuf::from).unwrap_or_else(|| cache.base_model_path());
    let engine = Engine::load(&model, EngineConfig::default())?;
    let dir = std::env::temp_dir().join(format!("tailor-memory-qa-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let embedder = Arc::new(BertEmbedder::load(cache.embedder_dir())?);
    let mut store = MemoryStore::open(dir.join("profile.db"), embedder, MemoryConfig::default())?;
    let ids: Vec<i64> = FACTS.iter().map(|(f, _, _)| store.add(NewMemory::new(*f)).map(|o| o.id)).collect::<Result<_, _>>()?;
    let mut top3 = 0;
    for ((_, q, _), id) in FACTS.iter().zip(&ids) {
        if store.search(&SearchQuery::new(*q, 3))?.iter().any(|h| h.memory.id == *id) {
            top3 += 1;
        }
    }
    let shared = Arc::new(Mutex::new(store));
    let mut params = GenerateParams::default();
    params.max_tokens = 48;
    let system = ChatMessage::system("You are a helpful personal assistant. Answer in one or two sentences.");
    let (mut off, mut on, mut used_right) = (0, 0, 0);
    for ((_, q, keys), id) in FACTS.iter().zip(&ids) {
        let prompt = Prompt::Chat(vec![system.clone(), ChatMessage::user(*q)]);
        let hit = |text: &str| keys.iter().any(|k| text.to_lowercase().contains(k));
        let a_off = engine.new_session().generate(&prompt, &params, &mut |_| Flow::Continue)?;
        let mut s = engine.new_session();
        s.set_memory(Some(shared.clone()), MemoryPromptConfig::default());
        let a_on = s.generate(&prompt, &params, &mut |_| Flow::Continue)?;
        off += hit(&a_off.text) as usize;
        on += hit(&a_on.text) as usize;
        used_right += a_on.memories.iter().any(|m| m.id == *id) as usize;
        println!("Q: {q}\n  off: {}\n  on:  {}  [memories {:?}]", a_off.text.trim().replace('\n', " "), a_on.text.trim().replace('\n', " "), a_on.memories.iter().map(|m| m.id).collect::<Vec<_>>());
    }
    println!("\nretrieval: the fact in the top 3 for {top3}/20 questions; in the prompt (limit 3, budget 256 tokens, similarity ≥ 0.2) for {used_right}/20");
    println!("answers stating the fact: memory off {off}/20, memory on {on}/20");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
