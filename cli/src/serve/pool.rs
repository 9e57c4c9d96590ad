//! The prefix cache: idle sessions (each a KV cache holding one recent conversation) kept in a
//! small LRU pool. Chat clients resend the whole history every turn; a request takes the idle
//! session of its model, adapter set and steering whose tokens share the longest prefix with
//! its prompt, so [`tailor::Session::generate`] only prefills what is new.
//!
//! Which session a prompt takes: the candidate of the same key with the longest common prefix,
//! if that prefix covers at least half of what the candidate holds (a follow-up turn, a
//! regenerated answer, an edited last message); a prompt that only shares the template's
//! opening with every candidate gets a fresh session instead of overwriting another
//! conversation. Returned sessions beyond the capacity evict the least recently used.

use std::sync::Mutex;

use tailor::Session;

/// What a session's cache was computed with; only sessions of the same key are reused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    /// The served model id.
    pub(crate) model: String,
    /// The request's own adapter/steering choice (canonical, with the identity of the loaded
    /// weights), or `None` when the session follows the model's registry.
    pub(crate) selection: Option<String>,
    /// Whether memories are retrieved into the prompt.
    pub(crate) memory: bool,
}

struct Idle {
    key: PoolKey,
    session: Session,
    /// The prompt tokens (before memories were added) and the answer's tokens: what the
    /// conversation holds, to match the next prompt against.
    tokens: Vec<u32>,
    last_used: u64,
}

/// The pool. `Send + Sync`; the lock is held only to pick or return a session.
pub(crate) struct SessionPool {
    idle: Mutex<(Vec<Idle>, u64)>,
    capacity: usize,
}

/// Length of the common prefix of `a` and `b`.
pub(crate) fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Picks among `candidates` (tokens held by each) the one to reuse for `prompt`: the longest
/// common prefix, if it covers at least half of that candidate's tokens.
pub(crate) fn pick<'a>(candidates: impl Iterator<Item = &'a [u32]>, prompt: &[u32]) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (i, held) in candidates.enumerate() {
        let c = common_prefix(held, prompt);
        if c > 0 && c * 2 >= held.len() && best.is_none_or(|(_, b)| c > b) {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

impl SessionPool {
    /// A pool keeping at most `capacity` idle sessions (0: none, every request starts cold).
    pub(crate) fn new(capacity: usize) -> Self {
        SessionPool { idle: Mutex::new((Vec::new(), 0)), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<Idle>, u64)> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the idle session of `key` best suited to `prompt` (see the module docs).
    pub(crate) fn take(&self, key: &PoolKey, prompt: &[u32]) -> Option<Session> {
        let mut g = self.lock();
        let same: Vec<usize> = g.0.iter().enumerate().filter(|(_, e)| &e.key == key).map(|(i, _)| i).collect();
        let i = pick(same.iter().map(|&i| g.0[i].tokens.as_slice()), prompt)?;
        Some(g.0.swap_remove(same[i]).session)
    }

    /// Returns a session after a generation; `tokens` is what its conversation holds.
    pub(crate) fn put(&self, key: PoolKey, session: Session, tokens: Vec<u32>) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        g.1 += 1;
        let now = g.1;
        g.0.push(Idle { key, session, tokens, last_used: now });
        while g.0.len() > self.capacity {
            let lru = g.0.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i).unwrap_or(0);
            g.0.swap_remove(lru);
        }
    }

    /// Idle sessions held.
    pub(crate) fn len(&self) -> usize {
        self.lock().0.len()
    }

    /// The capacity.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_longest_prefix_that_covers_half_the_candidate() {
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (0..10).chain(500..600).collect();
        let prompt: Vec<u32> = (0..120).collect();
        assert_eq!(pick([a.as_slice(), b.as_slice()].into_iter(), &prompt), Some(0));
        // Only the shared opening (10 of 110 held tokens): a fresh session instead.
        let other: Vec<u32> = (0..10).chain(900..950).collect();
        assert_eq!(pick([b.as_slice()].into_iter(), &other), None);
        // An edited last message: most of the candidate still reused.
        let edited: Vec<u32> = (0..90).chain(7000..7005).collect();
        assert_eq!(pick([b.as_slice(), a.as_slice()].into_iter(), &edited), Some(1));
        assert_eq!(pick(std::iter::empty(), &prompt), None);
    }

    /// Real sessions of a tiny model: a follow-up prompt takes the session holding its
    /// prefix and only runs the new tokens; other keys and unrelated prompts start fresh; the
    /// least recently returned session is evicted past the capacity.
    #[test]
    fn follow_ups_reuse_the_pooled_cache() {
        use tailor::testing::{TempDir, TinyModel};
        use tailor::{Flow, GenerateParams, Prompt};
        let dir = TempDir::new("serve-pool");
        let path = dir.0.join("tiny.gguf");
        TinyModel::default().write(&path).unwrap();
        let engine = tailor::Engine::load(&path, tailor::EngineConfig::default()).unwrap();
        let key = |m: &str| PoolKey { model: m.into(), selection: None, memory: false };
        let mut params = GenerateParams::default();
        params.max_tokens = 4;
        params.ignore_eos = true;
        let run = |s: &mut Session, tokens: &[u32]| s.generate(&Prompt::Tokens(tokens.to_vec()), &params, &mut |_| Flow::Continue).unwrap();

        let pool = SessionPool::new(2);
        let first: Vec<u32> = (1..40).collect();
        let mut s = engine.new_session();
        let g = run(&mut s, &first);
        assert_eq!(g.reused_tokens, 0);
        let mut held = first.clone();
        held.extend_from_slice(&g.token_ids);
        pool.put(key("a"), s, held.clone());

        let mut follow = held.clone();
        follow.extend(100..110);
        assert!(pool.take(&key("b"), &follow).is_none(), "another key's cache is never reused");
        assert!(pool.take(&key("a"), &(200..260).collect::<Vec<u32>>()).is_none(), "unrelated prompt");
        let mut s = pool.take(&key("a"), &follow).expect("the conversation's session");
        assert_eq!(pool.len(), 0);
        let g = run(&mut s, &follow);
        // Everything the session ran before is reused (the last generated token was never run).
        assert_eq!(g.reused_tokens, held.len() - 1);
        pool.put(key("a"), s, follow);

        for m in ["x", "y"] {
            pool.put(key(m), engine.new_session(), vec![1]);
        }
        assert_eq!(pool.len(), 2);
        assert!(pool.take(&key("a"), &held).is_none(), "the least recently used was evicted");
        assert!(pool.take(&key("x"), &[1, 2]).is_some());
    }

    #[test]
    fn common_prefix_counts() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
