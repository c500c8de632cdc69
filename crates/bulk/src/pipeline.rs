//! The stages every run shares: numbered keys from a listing, downloads and classification with
//! bounded concurrency, the actions, and results put back into listing order and committed as
//! parts.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::Arc;

use bestiary_engine::EngineError;
use bestiary_storage::{ObjectInfo, StorageError, Store};
use futures::{Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::actions::Actions;
use crate::config::UNCERTAIN_LABEL;
use crate::endpoint::{EndpointAnswer, EndpointClient};
use crate::error::{BulkError, Result};
use crate::local::LocalClassifier;
use crate::manifest::{Committed, ModelIdentity, PartWriter};
use crate::progress::Progress;
use crate::record::{self, LabelScore, RecordError, ResultRecord};

/// Results that may wait for an earlier, slower one, per photo being worked on: bounds the
/// memory of putting results back in order behind a slow download.
const REORDER_WINDOW_PER_SLOT: usize = 4;

/// Where predictions come from.
pub enum Classifier {
    Local(LocalClassifier),
    Endpoint(EndpointClient),
}

/// Classifies listed objects and commits their results.
pub struct Pipeline {
    pub input: Store,
    pub classifier: Classifier,
    pub actions: Option<Actions>,
    pub identity: ModelIdentity,
    pub min_score: Option<f32>,
    pub keep_label_when_unknown: bool,
    pub concurrency: usize,
    pub max_object_bytes: u64,
    pub progress: Arc<Progress>,
}

/// A selected object with its place in the listing.
struct Item {
    seq: u64,
    info: ObjectInfo,
    /// Held until the result is in its part: see [`REORDER_WINDOW_PER_SLOT`].
    permit: OwnedSemaphorePermit,
}

struct Done {
    seq: u64,
    result: Result<ResultRecord>,
    permit: OwnedSemaphorePermit,
}

/// How a round of listing and classifying ended.
#[derive(Debug, Default)]
pub struct RoundEnd {
    /// The listing was read to its end and every selected object committed.
    pub listing_complete: bool,
    /// Listed objects the selection turned down.
    pub not_selected: u64,
    pub parts: Vec<Committed>,
}

impl Pipeline {
    /// Lists `listing`, classifies what `select` takes, and commits the results in listing
    /// order through `writer`; `on_commit` hears of each part committed. Stops early, after
    /// committing what is done, when `stop` is cancelled or something fails.
    ///
    /// The last part's marker says the listing was complete when it was and `mark_complete`.
    ///
    /// # Errors
    /// The first failure (storage, engine, endpoint, action, commit); results before the failed
    /// photo in listing order are committed first, so a rerun continues from there.
    pub async fn run_round<S>(
        &self,
        listing: S,
        select: &mut (dyn FnMut(&ObjectInfo) -> bool + Send),
        writer: &mut PartWriter,
        stop: &CancellationToken,
        mark_complete: bool,
        on_commit: &mut (dyn FnMut(&Committed) + Send),
    ) -> Result<RoundEnd>
    where
        S: Stream<Item = Result<ObjectInfo, StorageError>> + Send,
    {
        let halt = stop.child_token();
        let window = Arc::new(Semaphore::new(self.concurrency * REORDER_WINDOW_PER_SLOT));
        let (items, receiver) = mpsc::channel::<Item>(self.concurrency);
        let feed = feed(listing, select, items, window, &halt, &self.progress);
        let consume = self.consume(receiver, writer, &halt, on_commit);
        let (fed, consumed) = tokio::join!(feed, consume);
        let (mut end, failure) = consumed;
        // A failed listing stays a storage error: an outage is transient (watch polls again),
        // a denied or missing bucket permanent, as the store says.
        let (fed, listing_failure) = match fed {
            Ok(fed) => (Some(fed), None),
            Err(error) => (None, Some(BulkError::Storage(error))),
        };
        let failure = failure.or(listing_failure);
        let complete = failure.is_none() && fed.as_ref().is_some_and(|f| f.complete);
        end.not_selected = fed.map_or(0, |f| f.not_selected);
        match writer.commit(mark_complete && complete).await {
            Ok(Some(committed)) => self.committed(committed, &mut end, on_commit),
            Ok(None) => {}
            Err(error) if failure.is_none() => return Err(error),
            Err(error) => tracing::warn!("could not commit the last results: {error}"),
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        end.listing_complete = complete;
        Ok(end)
    }

    fn committed(
        &self,
        committed: Committed,
        end: &mut RoundEnd,
        on_commit: &mut (dyn FnMut(&Committed) + Send),
    ) {
        self.progress.committed(committed.marker.tally.records);
        on_commit(&committed);
        end.parts.push(committed);
    }

    /// Classifies items as they come, puts results back in order, commits full or old parts.
    /// Returns what it committed and the first failure, if any.
    async fn consume(
        &self,
        receiver: mpsc::Receiver<Item>,
        writer: &mut PartWriter,
        halt: &CancellationToken,
        on_commit: &mut (dyn FnMut(&Committed) + Send),
    ) -> (RoundEnd, Option<BulkError>) {
        let items = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let mut results = pin!(
            items
                .map(|item| self.process(item))
                .buffer_unordered(self.concurrency)
        );
        let mut end = RoundEnd::default();
        let mut waiting: BTreeMap<u64, (ResultRecord, OwnedSemaphorePermit)> = BTreeMap::new();
        let mut next_seq = 0u64;
        // The earliest failed photo: nothing from it on is committed.
        let mut failed: Option<(u64, BulkError)> = None;
        loop {
            let deadline = writer.deadline();
            let done = tokio::select! {
                done = results.next() => done,
                () = sleep_until(deadline) => {
                    if let Err(error) = self.commit_part(writer, &mut end, on_commit).await {
                        halt.cancel();
                        failed.get_or_insert((next_seq, error));
                    }
                    continue;
                }
            };
            let Some(done) = done else { break };
            match done.result {
                Err(error) => {
                    halt.cancel();
                    if failed.as_ref().is_none_or(|(seq, _)| done.seq < *seq) {
                        failed = Some((done.seq, error));
                    }
                }
                Ok(record) => {
                    self.progress.classified(record.error.is_some());
                    waiting.insert(done.seq, (record, done.permit));
                }
            }
            while failed.as_ref().is_none_or(|(seq, _)| next_seq < *seq) {
                let Some((record, _permit)) = waiting.remove(&next_seq) else {
                    break;
                };
                writer.append(&record);
                next_seq += 1;
                if writer.is_full()
                    && let Err(error) = self.commit_part(writer, &mut end, on_commit).await
                {
                    halt.cancel();
                    failed = Some((next_seq, error));
                }
            }
        }
        (end, failed.map(|(_, error)| error))
    }

    async fn commit_part(
        &self,
        writer: &mut PartWriter,
        end: &mut RoundEnd,
        on_commit: &mut (dyn FnMut(&Committed) + Send),
    ) -> Result<()> {
        if let Some(committed) = writer.commit(false).await? {
            self.committed(committed, end, on_commit);
        }
        Ok(())
    }

    async fn process(&self, item: Item) -> Done {
        let Item { seq, info, permit } = item;
        Done {
            seq,
            result: self.classify(info).await,
            permit,
        }
    }

    /// Downloads, classifies and acts on one object.
    async fn classify(&self, info: ObjectInfo) -> Result<ResultRecord> {
        if info.size > self.max_object_bytes {
            let message = format!(
                "object of {} bytes exceeds the limit of {} bytes",
                info.size, self.max_object_bytes
            );
            return Ok(self.failed(info, "too-large", message));
        }
        let photo = match self.input.get(&info.key).await {
            Ok(bytes) => bytes,
            // Deleted between the listing and now: said so, not fatal.
            Err(error) if error.is_not_found() => {
                return Ok(self.failed(info, "not-found", error.to_string()));
            }
            Err(error) => return Err(error.into()),
        };
        let record = match &self.classifier {
            Classifier::Local(local) => match local.preprocess(photo.clone()).await {
                Ok((tensor, image)) => {
                    let prediction = local.predict(tensor).await?;
                    let top_k = prediction
                        .top_k
                        .into_iter()
                        .map(|s| LabelScore {
                            label: s.label,
                            score: s.score,
                        })
                        .collect();
                    self.labelled(
                        info,
                        Answer {
                            label: prediction.label,
                            score: prediction.score,
                            top_k,
                            unknown: (prediction.unknown, prediction.unknown_score),
                            model: None,
                            size: (Some(image.width), Some(image.height)),
                        },
                    )
                }
                Err(EngineError::Decode(error)) => {
                    self.failed(info, error.code(), error.to_string())
                }
                Err(other) => return Err(other.into()),
            },
            Classifier::Endpoint(client) => match client.classify(photo.clone()).await? {
                EndpointAnswer::Classified {
                    label,
                    score,
                    top_k,
                    unknown,
                    unknown_score,
                    model,
                    width,
                    height,
                } => self.labelled(
                    info,
                    Answer {
                        label,
                        score,
                        top_k,
                        unknown: (unknown, unknown_score),
                        model,
                        size: (width, height),
                    },
                ),
                EndpointAnswer::Rejected { code, message } => self.failed(info, &code, message),
            },
        };
        if let Some(actions) = &self.actions {
            actions.apply(&record, photo).await?;
        }
        Ok(record)
    }

    fn labelled(&self, info: ObjectInfo, answer: Answer) -> ResultRecord {
        let Answer {
            label,
            score,
            top_k,
            unknown: (unknown, unknown_score),
            model,
            size: (width, height),
        } = answer;
        let rejected = unknown == Some(true);
        // "unknown" says more than "uncertain": the photo is none of the classes.
        let uncertain = !rejected && self.min_score.is_some_and(|min| score < min);
        let label = match top_k.first() {
            Some(best) if rejected && self.keep_label_when_unknown => best.label.clone(),
            _ => label,
        };
        let model = model.unwrap_or_else(|| self.identity.clone());
        ResultRecord {
            url: self.input.url_of(&info.key),
            key: info.key,
            etag: info.etag,
            size: info.size,
            label: Some(if uncertain {
                UNCERTAIN_LABEL.to_owned()
            } else {
                label
            }),
            score: Some(score),
            unknown,
            unknown_score,
            top_k,
            model: model.name,
            model_version: model.version,
            width,
            height,
            error: None,
            classified_at: record::timestamp(),
        }
    }

    fn failed(&self, info: ObjectInfo, code: &str, message: String) -> ResultRecord {
        ResultRecord {
            url: self.input.url_of(&info.key),
            key: info.key,
            etag: info.etag,
            size: info.size,
            label: None,
            score: None,
            unknown: None,
            unknown_score: None,
            top_k: Vec::new(),
            model: self.identity.name.clone(),
            model_version: self.identity.version.clone(),
            width: None,
            height: None,
            error: Some(RecordError {
                code: code.to_owned(),
                message,
            }),
            classified_at: record::timestamp(),
        }
    }
}

/// What the model (local or behind an endpoint) said about one photo.
struct Answer {
    label: String,
    score: f32,
    top_k: Vec<LabelScore>,
    /// The detector's verdict and score, for a model with one.
    unknown: (Option<bool>, Option<f32>),
    /// The model version that answered, when an endpoint says.
    model: Option<ModelIdentity>,
    /// Width and height as decoded, when known.
    size: (Option<u32>, Option<u32>),
}

/// How feeding ended.
struct Fed {
    complete: bool,
    not_selected: u64,
}

/// Numbers the selected objects of `listing` and hands them on, each holding a permit of
/// `window`; stops at the end of the listing or when `halt` is cancelled.
async fn feed<S>(
    listing: S,
    select: &mut (dyn FnMut(&ObjectInfo) -> bool + Send),
    items: mpsc::Sender<Item>,
    window: Arc<Semaphore>,
    halt: &CancellationToken,
    progress: &Progress,
) -> Result<Fed, StorageError>
where
    S: Stream<Item = Result<ObjectInfo, StorageError>> + Send,
{
    let mut listing = pin!(listing);
    let mut seq = 0u64;
    let mut not_selected = 0u64;
    let stopped = |not_selected| {
        Ok(Fed {
            complete: false,
            not_selected,
        })
    };
    loop {
        let next = tokio::select! {
            biased;
            () = halt.cancelled() => return stopped(not_selected),
            next = listing.next() => next,
        };
        let info = match next {
            None => {
                return Ok(Fed {
                    complete: true,
                    not_selected,
                });
            }
            Some(Err(error)) => {
                halt.cancel();
                return Err(error);
            }
            Some(Ok(info)) => info,
        };
        progress.listed();
        if !select(&info) {
            not_selected += 1;
            continue;
        }
        progress.selected();
        let permit = tokio::select! {
            biased;
            () = halt.cancelled() => return stopped(not_selected),
            permit = window.clone().acquire_owned() => permit.expect("the window is never closed"),
        };
        if items.send(Item { seq, info, permit }).await.is_err() {
            return stopped(not_selected);
        }
        seq += 1;
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
