//! A budget of bytes shared by everyone who holds a map in memory for a while: bodies being
//! received (across every source) and maps being prepared each have one, so that many
//! tenants' large maps arriving together cannot add up past the operator's memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are made in steps of this much, so a body arriving in 16 KiB chunks asks
/// the semaphore once per MiB, not once per chunk.
const STEP: u64 = 1024 * 1024;

/// A budget of bytes, counted in [`STEP`]s.
#[derive(Clone)]
pub struct ByteBudget {
    steps: Arc<Semaphore>,
    total: u32,
}

impl ByteBudget {
    /// A budget of `bytes` (rounded up to a whole step).
    pub fn new(bytes: u64) -> ByteBudget {
        let total = u32::try_from(bytes.div_ceil(STEP))
            .unwrap_or(u32::MAX)
            .max(1);
        ByteBudget {
            steps: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Grows `held` to cover `bytes`, waiting while other bodies hold the rest; a body
    /// larger than the whole budget holds all of it. The caller's timeout bounds the wait.
    pub async fn reserve(
        &self,
        held: Option<OwnedSemaphorePermit>,
        bytes: u64,
    ) -> Option<OwnedSemaphorePermit> {
        let needed = u32::try_from(bytes.div_ceil(STEP))
            .unwrap_or(u32::MAX)
            .min(self.total);
        let have = held
            .as_ref()
            .map_or(0, |permit| permit.num_permits() as u32);
        if needed <= have {
            return held;
        }
        // Closed never: the semaphore lives as long as the budget.
        let more = Arc::clone(&self.steps)
            .acquire_many_owned(needed - have)
            .await
            .ok()?;
        Some(match held {
            Some(mut permit) => {
                permit.merge(more);
                permit
            }
            None => more,
        })
    }

    /// Steps free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.steps.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_holds_its_share_until_it_is_done_and_others_wait_for_it() {
        let budget = ByteBudget::new(3 * STEP);
        let first = budget.reserve(None, 1).await;
        let first = budget.reserve(first, 2 * STEP).await;
        assert_eq!(budget.free(), 1);
        // A second body fits one step; its second step waits for the first body.
        let second = budget.reserve(None, STEP).await;
        assert_eq!(budget.free(), 0);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(second, 2 * STEP).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.unwrap();
        assert_eq!(second.as_ref().unwrap().num_permits(), 2);
        assert_eq!(budget.free(), 1);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(2 * STEP);
        let all = budget.reserve(None, 10 * STEP).await;
        assert_eq!(all.unwrap().num_permits(), 2);
    }
}
