//! The batch queue on its own: images of one model version share batches, versions never mix
//! in one batch (their inputs may not even have the same size) even with several inference
//! threads, and closing finishes the queue.

use std::sync::Arc;
use std::time::Duration;

use crate::common::Models;
use bestiary_dataset::decode::DecodeLimits;
use bestiary_networks::ArchitectureConfig;
use bestiary_serve::ServedModel;
use bestiary_serve::batcher::{BatchSettings, Batcher};
use bestiary_serve::usage::Usage;

/// `version` of the test model, ready to submit to a batcher.
async fn served(models: &Models, version: &str) -> Arc<ServedModel> {
    let model = models.load_direct(version).await;
    Arc::new(ServedModel::new(model, &DecodeLimits::default()))
}

#[test]
fn batches_group_one_model_version_and_never_mix_two() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let models = Models::new();
        let first = models.commit().await;
        let other_size = crate::common::model_parts::train_parts(
            ArchitectureConfig::SeedCnn { width: 8, depth: 2 },
            40,
            2,
        );
        let second = models.commit_parts(&other_size).await;
        let a = served(&models, &first).await;
        let b = served(&models, &second).await;
        assert_ne!(a.model.input_len(), b.model.input_len());

        let usage = Arc::new(Usage::new(0.1));
        let batcher = Batcher::start(
            BatchSettings {
                max_batch_size: Some(8),
                max_batch_delay: Duration::from_millis(300),
                max_queue: 16,
                // Two threads take turns at the queue; batches still gather whole.
                inference_threads: 2,
            },
            usage.clone(),
        )
        .unwrap();
        let submit = |model: &Arc<ServedModel>| {
            batcher
                .submit(model.clone(), vec![0.5; model.model.input_len()], 2)
                .unwrap()
        };

        // Three images of one version, queued together, run as one batch.
        let places = batcher.admit(3).unwrap();
        assert_eq!(batcher.queue_depth(), 3);
        let answers = [submit(&a), submit(&a), submit(&a)];
        for answer in answers {
            let classified = answer.await.unwrap().unwrap();
            assert_eq!(classified.batch_size, 3);
            assert_eq!(classified.prediction.top_k.len(), 2);
        }
        drop(places);
        assert_eq!(batcher.queue_depth(), 0);

        // Alternating versions: each image waits for its own version's batch, none fails.
        let answers = [submit(&a), submit(&b), submit(&a), submit(&b)];
        for answer in answers {
            let classified = answer.await.unwrap().expect("a batch mixed two versions");
            assert_eq!(classified.batch_size, 1);
        }

        // Closing answers what is queued, then refuses more.
        let queued = submit(&b);
        let closing = std::thread::scope(|scope| {
            let closing = scope.spawn(|| batcher.close());
            let answer = futures::executor::block_on(queued);
            closing.join().unwrap();
            answer
        });
        assert!(closing.unwrap().is_ok());
        assert!(
            batcher
                .submit(a.clone(), vec![0.0; a.model.input_len()], 1)
                .is_err()
        );
        assert_eq!(usage.report(0).images_classified, 8);
    });
}

#[test]
fn admission_is_refused_beyond_the_queue() {
    let batcher = Batcher::start(
        BatchSettings {
            max_batch_size: Some(4),
            max_batch_delay: Duration::from_millis(1),
            max_queue: 3,
            inference_threads: 1,
        },
        Arc::new(Usage::new(0.1)),
    )
    .unwrap();
    let two = batcher.admit(2).unwrap();
    assert!(matches!(
        batcher.admit(2),
        Err(bestiary_serve::ApiError::Overloaded { .. })
    ));
    let one = batcher.admit(1).unwrap();
    drop(two);
    assert!(batcher.admit(2).is_ok());
    drop(one);
    assert!(matches!(
        batcher.admit(4),
        Err(bestiary_serve::ApiError::PayloadTooLarge(_))
    ));
    batcher.close();
}

/// A thread that met another version's image while gathering keeps it for its next batch; it
/// must run it even while the other thread sits on the empty queue waiting for more work.
#[test]
fn an_image_held_over_a_version_switch_is_answered_while_the_queue_is_idle() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let models = Models::new();
        // A slow version and a fast one: the thread holding a fast image over is still running
        // the slow batch when the other thread has finished and gone back to the empty queue.
        let slow_parts = crate::common::model_parts::train_parts(
            ArchitectureConfig::SeedCnn {
                width: 32,
                depth: 4,
            },
            128,
            1,
        );
        let slow = models.commit_parts(&slow_parts).await;
        let fast = models.commit().await;
        let slow = served(&models, &slow).await;
        let fast = served(&models, &fast).await;
        let batcher = Batcher::start(
            BatchSettings {
                max_batch_size: Some(8),
                max_batch_delay: Duration::from_millis(2),
                max_queue: 64,
                inference_threads: 2,
            },
            Arc::new(Usage::new(0.1)),
        )
        .unwrap();
        for round in 0..5 {
            // One thread gathers the seven slow images and holds the first fast one over; the
            // other runs the second fast one alone and waits on the queue.
            let models = std::iter::repeat_n(&slow, 7).chain([&fast, &fast]);
            let answers: Vec<_> = models
                .map(|model| {
                    batcher
                        .submit(model.clone(), vec![0.5; model.model.input_len()], 1)
                        .unwrap()
                })
                .collect();
            for answer in answers {
                tokio::time::timeout(Duration::from_secs(10), answer)
                    .await
                    .unwrap_or_else(|_| panic!("round {round}: an image was never answered"))
                    .unwrap()
                    .unwrap();
            }
        }
        batcher.close();
    });
}
