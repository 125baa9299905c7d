//! Watches over etcd's Watch stream: history from a revision, then live batches.

use super::*;

impl Etcd {
    pub(super) async fn open_watch(
        &self,
        namespace: &Namespace,
        prefix: &str,
        start: Option<Revision>,
    ) -> Result<Watching, StateError> {
        let current = self.current_revision().await?;
        let start = match start {
            None | Some(0) => current + 1,
            Some(start) if start > current + 1 => {
                return Err(StateError::Future {
                    requested: start,
                    current,
                });
            }
            Some(start) => start,
        };
        let key = self.key(namespace, prefix);
        let (requests, request_stream) = mpsc::channel(1);
        requests
            .send(etcd::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    etcd::WatchCreateRequest {
                        range_end: prefix_end(&key),
                        key,
                        start_revision: start as i64,
                        ..Default::default()
                    },
                )),
            })
            .await
            .map_err(|_| StateError::Internal("watch request channel closed".into()))?;
        let mut responses = WatchClient::new(self.channel())
            .max_decoding_message_size(16 << 20)
            .watch(ReceiverStream::new(request_stream))
            .await
            .map_err(|status| self.failed(status))?
            .into_inner();
        let created = responses
            .next()
            .await
            .ok_or_else(|| StateError::Unavailable("etcd closed the watch".into()))?
            .map_err(|status| self.failed(status))?;
        // etcd reports a compacted start revision after `created`, when it next syncs its
        // watchers: a read at the start revision finds out now, so the caller gets the
        // error from the Watch call itself, as with the embedded store.
        let compacted = created.compact_revision > 0 || self.compacted(start).await?;
        if compacted {
            let mut first = created.compact_revision;
            while first == 0 {
                match tokio::time::timeout(Duration::from_secs(5), responses.next()).await {
                    Ok(Some(Ok(response))) => first = response.compact_revision,
                    _ => {
                        return Err(StateError::Unavailable(
                            "etcd did not say where its history starts".into(),
                        ));
                    }
                }
            }
            return Err(StateError::Compacted {
                requested: start,
                first: first as Revision,
            });
        }
        let (events, stream) = mpsc::channel(16);
        let this = self.clone();
        let namespace = namespace.clone();
        let namespace_prefix = self.namespace_prefix(&namespace);
        tokio::spawn(async move {
            // Keeps the request side open: etcd ends the watch when it closes.
            let _requests = requests;
            loop {
                // A watcher that went away ends the etcd watch now, not at the next event.
                let response = tokio::select! {
                    _ = events.closed() => return,
                    response = responses.next() => match response {
                        Some(response) => response,
                        None => break,
                    },
                };
                let response = match response {
                    Ok(response) => response,
                    Err(status) => {
                        let _ = events.send(Err(this.failed(status))).await;
                        return;
                    }
                };
                if response.compact_revision > 0 || response.canceled {
                    let error = match response.compact_revision {
                        0 => StateError::Unavailable(format!(
                            "etcd cancelled the watch: {}",
                            response.cancel_reason
                        )),
                        first => StateError::Compacted {
                            requested: start,
                            first: first as Revision,
                        },
                    };
                    let _ = events.send(Err(error)).await;
                    return;
                }
                for batch in this
                    .batches(&namespace, &namespace_prefix, response.events)
                    .await
                {
                    if events.send(Ok(Arc::new(batch))).await.is_err() {
                        return;
                    }
                }
            }
            let _ = events
                .send(Err(StateError::Unavailable("etcd closed the watch".into())))
                .await;
        });
        Ok(Watching {
            revision: start - 1,
            events: Box::pin(ReceiverStream::new(stream)),
        })
    }

    /// Groups etcd events by revision.
    pub(super) async fn batches(
        &self,
        namespace: &Namespace,
        namespace_prefix: &str,
        events: Vec<mvccpb::Event>,
    ) -> Vec<Batch> {
        let unknown_lease = events.iter().any(|e| {
            e.kv.as_ref().is_some_and(|kv| {
                kv.lease != 0 && !self.leases.lock().owner_of.contains_key(&kv.lease)
            })
        });
        if unknown_lease {
            let _ = self.load_owners().await;
        }
        let mut batches: Vec<Batch> = Vec::new();
        for event in events {
            let kind = match event.r#type() {
                mvccpb::event::EventType::Put => EventKind::Put,
                mvccpb::event::EventType::Delete => EventKind::Delete,
            };
            let Some(kv) = event.kv else { continue };
            let kv = self.to_domain(namespace_prefix, kv, kind == EventKind::Put);
            let event = Event {
                kind,
                namespace: namespace.clone(),
                kv,
            };
            match batches.last_mut() {
                Some(batch) if batch.revision == event.kv.mod_revision => batch.events.push(event),
                _ => batches.push(Batch {
                    revision: event.kv.mod_revision,
                    events: vec![event],
                }),
            }
        }
        batches
    }
}
