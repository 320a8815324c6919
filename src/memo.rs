//! The answers to the last few questions, each worked out once however many ask at once:
//! a thousand objects whose source sent the same new map prepare it (parse, validate,
//! gzip) once, not a thousand times.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::locks::lock;

/// The answers for the last `capacity` keys.
pub struct Memo<K, V> {
    answers: Mutex<VecDeque<(K, Arc<OnceCell<V>>)>>,
    capacity: usize,
}

impl<K: PartialEq, V: Clone> Memo<K, V> {
    /// Remembers the answers to the last `capacity` (at least 1) keys.
    pub fn new(capacity: usize) -> Memo<K, V> {
        Memo {
            answers: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// The answer for `key`: remembered, being worked out by another caller (then this one
    /// waits for it), or worked out here by `work`. An `Err` of `work` is not remembered:
    /// the next caller works it out again.
    pub async fn get_or_try<E, F, Fut>(&self, key: K, work: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = self.cell(key);
        cell.get_or_try_init(work).await.cloned()
    }

    /// Forgets the answers worked out for which `keep` says no (one being worked out is
    /// kept).
    pub fn retain(&self, keep: impl Fn(&V) -> bool) {
        lock(&self.answers).retain(|(_, cell)| cell.get().is_none_or(&keep));
    }

    fn cell(&self, key: K) -> Arc<OnceCell<V>> {
        let mut answers = lock(&self.answers);
        if let Some((_, cell)) = answers.iter().find(|(k, _)| *k == key) {
            return Arc::clone(cell);
        }
        if answers.len() >= self.capacity {
            answers.pop_front();
        }
        let cell = Arc::new(OnceCell::new());
        answers.push_back((key, Arc::clone(&cell)));
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn each_key_is_worked_out_once_and_the_oldest_forgotten() {
        let memo: Memo<u32, u32> = Memo::new(2);
        let work = AtomicUsize::new(0);
        let ask = |key: u32| {
            let work = &work;
            let memo = &memo;
            async move {
                memo.get_or_try(key, || async move {
                    work.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    Ok::<u32, ()>(key * 10)
                })
                .await
            }
        };
        let answers = futures::future::join_all((0..50).map(|_| ask(1))).await;
        assert!(answers.iter().all(|a| *a == Ok(10)));
        assert_eq!(work.load(Ordering::SeqCst), 1);
        ask(2).await.unwrap();
        ask(3).await.unwrap();
        ask(1).await.unwrap();
        assert_eq!(work.load(Ordering::SeqCst), 4, "key 1 was forgotten");
    }

    #[tokio::test]
    async fn answers_retain_rejects_are_worked_out_again() {
        let memo: Memo<u32, u32> = Memo::new(2);
        let work = AtomicUsize::new(0);
        let ask = |key: u32| {
            let (work, memo) = (&work, &memo);
            async move {
                memo.get_or_try(key, || async move {
                    work.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, ()>(key)
                })
                .await
            }
        };
        ask(1).await.unwrap();
        ask(2).await.unwrap();
        memo.retain(|answer| *answer != 1);
        ask(2).await.unwrap();
        assert_eq!(work.load(Ordering::SeqCst), 2, "2 kept");
        ask(1).await.unwrap();
        assert_eq!(work.load(Ordering::SeqCst), 3, "1 forgotten");
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let memo: Memo<u32, u32> = Memo::new(2);
        assert_eq!(memo.get_or_try(1, || async { Err("no") }).await, Err("no"));
        assert_eq!(
            memo.get_or_try(1, || async { Ok::<_, &str>(5) }).await,
            Ok(5)
        );
    }
}
