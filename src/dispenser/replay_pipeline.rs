//! Replay on two threads, for start-up: the caller reads and decodes records (WAL or
//! snapshot), a `replay-apply` thread applies them to a [`Recovered`] in order.

use super::{Recovered, ReplayError, decode_record};
use crate::core::{DigestKey, DigestedClaim, Event};

/// Records handed from the decoding thread to the applying thread at a time.
pub const REPLAY_PIPELINE_BATCH_RECORDS: usize = 512;
/// Batches queued between the two threads (bounds the memory of decoded records in flight).
pub const REPLAY_PIPELINE_QUEUE_BATCHES: usize = 8;

/// A record decoded on the reading thread. Claims, nearly all of a big log, also get their
/// identity digests there (SipHash of every key), which takes that work off the applying
/// thread, the slower of the two.
enum Decoded {
    Claim(DigestedClaim),
    Other(u8, Event),
}

type DecodedBatch = Vec<(u64, Decoded)>;

/// The decoding side of [`replay_on_two_threads`]: takes raw records, decodes them on the
/// caller's thread and queues them for the applying thread.
pub struct ReplayFeed {
    batch: DecodedBatch,
    queue: std::sync::mpsc::SyncSender<DecodedBatch>,
    digest_key: DigestKey,
}

impl ReplayFeed {
    /// Decodes one record and queues it. A decode error is returned at once; a record the
    /// applying thread refuses is reported by [`replay_on_two_threads`] (this then returns
    /// [`ReplayError::Stopped`], so the caller stops feeding).
    pub fn push(&mut self, seq: u64, kind: u8, payload: &[u8]) -> Result<(), ReplayError> {
        let decoded = match decode_record(seq, kind, payload)? {
            Event::VoucherClaimed(claim) => {
                Decoded::Claim(DigestedClaim::new(self.digest_key, claim))
            }
            event => Decoded::Other(kind, event),
        };
        self.batch.push((seq, decoded));
        if self.batch.len() >= REPLAY_PIPELINE_BATCH_RECORDS {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), ReplayError> {
        let full = std::mem::replace(
            &mut self.batch,
            Vec::with_capacity(REPLAY_PIPELINE_BATCH_RECORDS),
        );
        self.queue.send(full).map_err(|_| ReplayError::Stopped)
    }
}

/// Replays on two threads: `feed` runs on the caller's thread and hands raw records to a
/// [`ReplayFeed`] (which decodes them), while a `replay-apply` thread applies them to
/// `recovered` in order with [`Recovered::apply_decoded_deferred`]. Reading, checksums and
/// decoding then overlap with the index work instead of adding to it.
///
/// Returns what `feed` returned and the outcome of applying everything it fed. When both
/// failed, the applying side's error is about an earlier record and is the one to report.
/// A panic on the applying thread (a broken core invariant) is resumed here.
pub fn replay_on_two_threads<R>(
    recovered: &mut Recovered,
    feed: impl FnOnce(&mut ReplayFeed) -> R,
) -> (R, Result<(), ReplayError>) {
    let digest_key = recovered.digest_key();
    std::thread::scope(|scope| {
        let (queue, batches) =
            std::sync::mpsc::sync_channel::<DecodedBatch>(REPLAY_PIPELINE_QUEUE_BATCHES);
        let applier = std::thread::Builder::new()
            .name("replay-apply".into())
            .spawn_scoped(scope, move || {
                for batch in batches {
                    for (seq, decoded) in batch {
                        match decoded {
                            Decoded::Claim(claim) => {
                                recovered.apply_digested_deferred(seq, claim)?
                            }
                            Decoded::Other(kind, event) => {
                                recovered.apply_decoded_deferred(seq, kind, event)?
                            }
                        }
                    }
                }
                recovered.finish()
            })
            .expect("spawn the replay-apply thread");
        let mut feeder = ReplayFeed {
            batch: Vec::with_capacity(REPLAY_PIPELINE_BATCH_RECORDS),
            queue,
            digest_key,
        };
        let fed = feed(&mut feeder);
        // Whatever was decoded goes to the applier, also after a failure: an earlier
        // record's refusal is the one to report.
        let _ = feeder.send();
        drop(feeder);
        let applied = applier
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (fed, applied)
    })
}
