//! One task: its handler, its queue, and its restarts after a panic.

use super::*;

impl<H: Handler> TaskCell<H> {
    pub(super) fn new(options: TaskOptions, factory: Arc<dyn Fn() -> H + Send + Sync>) -> Self {
        Self {
            alias: options.alias.into(),
            name: options.name.into(),
            parent: options.parent.map(Into::into),
            labels: options.labels,
            restart: options.restart,
            max_restarts: options.max_restarts,
            period: options.period,
            factory,
            state: Mutex::new(CellState {
                queue: VecDeque::new(),
                handler: None,
                draining: false,
                stopped: false,
                restarts: 0,
                recent: VecDeque::new(),
            }),
        }
    }

    pub(super) fn lock(&self) -> parking_lot::MutexGuard<'_, CellState<H>> {
        self.state.lock()
    }

    /// A new handler that has run `on_start`; a panic or error there is a failure.
    pub(super) async fn fresh_handler(&self, ctx: &Context) -> Result<H, String> {
        let mut handler = (self.factory)();
        match CatchUnwind(Box::pin(handler.on_start(ctx))).await {
            Ok(Ok(())) => Ok(handler),
            Ok(Err(error)) => Err(format!("on_start failed: {error}")),
            Err(panic) => Err(format!("on_start panicked: {panic}")),
        }
    }

    /// Handles what is queued until the mailbox is empty or the task stops.
    pub(super) async fn drain(self: Arc<Self>, tasks: Tasks) {
        loop {
            let next = {
                let mut state = self.lock();
                let next = match state.stopped {
                    true => None,
                    false => state.queue.pop_front(),
                };
                match next {
                    Some(envelope) => Ok((envelope, state.handler.take())),
                    None => {
                        state.draining = false;
                        // Stopped while this drain ran: `halt` left `on_stop` to it.
                        match state.stopped {
                            true => Err(state.handler.take()),
                            false => Err(None),
                        }
                    }
                }
            };
            let (envelope, handler) = match next {
                Ok(next) => next,
                Err(stopped) => {
                    if let (Some(mut handler), Ok(ctx)) =
                        (stopped, tasks.context(&self.alias, &self.name))
                    {
                        let _ = CatchUnwind(Box::pin(handler.on_stop(&ctx))).await;
                    }
                    return;
                }
            };
            let Ok(ctx) = tasks.context(&self.alias, &self.name) else {
                // Not attached: nothing could be answered. Keep it for later.
                let mut state = self.lock();
                state.queue.push_front(envelope);
                state.handler = handler;
                state.draining = false;
                return;
            };
            let mut handler = match handler {
                Some(handler) => handler,
                None => match self.fresh_handler(&ctx).await {
                    Ok(handler) => handler,
                    Err(failure) => {
                        let refused = refusal(&envelope, Code::Unavailable, &failure);
                        tasks.refuse_all(refused.into_iter().collect()).await;
                        // Restarted or stopped: the next turn of the loop sees which.
                        let _ = self.crashed(&tasks, &failure).await;
                        continue;
                    }
                },
            };
            let request = (envelope.kind() == EnvelopeKind::Request).then(|| Envelope {
                kind: envelope.kind,
                id: envelope.id,
                origin: envelope.origin.clone(),
                destination: envelope.destination.clone(),
                ..Default::default()
            });
            let outcome = CatchUnwind(Box::pin(handle(
                &mut handler,
                &ctx,
                &tasks.inner.counters,
                envelope,
                None,
            )))
            .await;
            match outcome {
                Ok(()) => self.lock().handler = Some(handler),
                Err(panic) => {
                    drop(handler);
                    let failure = format!("task {} panicked: {panic}", self.alias);
                    if let Some(request) = request {
                        let refused = refusal(&request, Code::Internal, &failure);
                        tasks.refuse_all(refused.into_iter().collect()).await;
                    }
                    if self.crashed(&tasks, &failure).await {
                        // Restarted at once, like an OTP child: a ready handler waits.
                        match self.fresh_handler(&ctx).await {
                            Ok(handler) => self.lock().handler = Some(handler),
                            Err(failure) => {
                                let _ = self.crashed(&tasks, &failure).await;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Counts a failure; returns whether the task is to be restarted. Otherwise it is
    /// stopped and removed (temporary, or past its intensity).
    pub(super) async fn crashed(self: &Arc<Self>, tasks: &Tasks, failure: &str) -> bool {
        let exceeded = {
            let mut state = self.lock();
            let now = Instant::now();
            state.restarts += 1;
            state.recent.push_back(now);
            while state
                .recent
                .front()
                .is_some_and(|at| now.duration_since(*at) > self.period)
            {
                state.recent.pop_front();
            }
            let exceeded = state.recent.len() > self.max_restarts as usize;
            if self.restart != Restart::Temporary && !exceeded {
                drop(state);
                tasks.announce(Announcement::Upsert(self.record(), None));
                return true;
            }
            state.stopped = true;
            exceeded
        };
        let refusals = self.take_queue(&format!("task {} stopped: {failure}", self.alias));
        tasks.refuse_all(refusals).await;
        tasks.table_mut().remove(&self.alias);
        tasks.announce(Announcement::Remove(self.alias.to_string(), None));
        if exceeded {
            tracing::error!(alias = %self.alias, %failure, "task exceeded its restart intensity");
            if let Some(host) = tasks.host() {
                let message = format!(
                    "task {} failed more than {} times in {:?}: {failure}",
                    self.alias, self.max_restarts, self.period
                );
                tokio::spawn(async move {
                    if let Err(error) = host.fail(TASK_INTENSITY_ERROR, &message).await {
                        tracing::warn!(%error, "could not report the task's failure");
                    }
                });
            }
        }
        false
    }

    pub(super) fn take_queue(&self, why: &str) -> Vec<Envelope> {
        let queued = std::mem::take(&mut self.lock().queue);
        queued
            .iter()
            .filter_map(|envelope| refusal(envelope, Code::Unavailable, why))
            .collect()
    }
}
