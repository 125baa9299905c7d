//! Supervisor.Host: a host process announces the task containers it runs, so that
//! their aliases route to its stream. A task is an alias like any container's: the host
//! must be entitled to each one it announces (see [`SupervisorService::may_host`]). A
//! child node announces its tree's aliases the same way; on a node that has a parent,
//! those new here are claimed in the tree above first ([`crate::upstream`]).

use super::*;
use crate::{HostedTask, upstream::Claimed};

impl SupervisorService {
    /// Each task's outcome in the order the request named them: refused here (a bad
    /// definition) or by the registry.
    pub(super) async fn host_tasks(
        &self,
        caller: &Principal,
        request: wire::HostRequest,
    ) -> Result<wire::HostResponse, ApiError> {
        reef_access::check_claim(caller, &request.alias)?;
        let host = parse_alias(&request.alias)?;
        // Each upsert's alias, and why it was refused before reaching the registry.
        let mut order = Vec::with_capacity(request.upsert.len());
        let mut upsert = Vec::with_capacity(request.upsert.len());
        for task in request.upsert {
            let alias = task.alias.clone();
            match convert::hosted_task(task).and_then(|task| {
                self.may_host(caller, &host, &task)?;
                Ok(task)
            }) {
                Ok(task) => {
                    upsert.push(task);
                    order.push((alias, None));
                }
                Err(refusal) => order.push((alias, Some(refusal))),
            }
        }
        let remove = request
            .remove
            .iter()
            .map(|alias| parse_alias(alias))
            .collect::<Result<Vec<_>, _>>()?;
        if let (Principal::Node(_), Some(upstream)) = (caller, &self.upstream) {
            self.claim_above(upstream, &host, &upsert).await;
        }
        let mut outcomes = self
            .registry
            .host_tasks(&host, &request.lease, upsert, remove, request.replace)?
            .into_iter();
        let results = order
            .into_iter()
            .map(|(alias, refused)| {
                let outcome = match refused {
                    Some(refusal) => Err(refusal),
                    // One registry outcome per task that reached it, in order.
                    None => outcomes
                        .next()
                        .unwrap_or(Ok(false))
                        .map(drop)
                        .map_err(ApiError::from),
                };
                batch_result(alias, outcome)
            })
            .collect();
        Ok(wire::HostResponse { results })
    }

    /// Claims in the tree above the tasks child link `link` announces that are new here.
    /// Those held elsewhere are recorded so (see [`Registry::refuse_route`]), and the
    /// registry refuses them. Unlinked from the parent, the new ones are taken for now:
    /// the parent's answer to this node's next announcement decides (see the uplink).
    async fn claim_above(&self, upstream: &Upstream, link: &Alias, tasks: &[HostedTask]) {
        let new: Vec<_> = tasks
            .iter()
            .filter(|task| !self.registry.is_hosted_by(task.alias.as_str(), link))
            .map(convert::hosted_task_to_wire)
            .collect();
        if new.is_empty() {
            return;
        }
        let Claimed::Refused(refused) = upstream.claim(new).await else {
            return;
        };
        for (alias, reason) in refused {
            let Ok(alias) = Alias::parse(&alias) else {
                continue;
            };
            tracing::info!(%alias, %link, %reason, "a child claimed an alias the tree above holds elsewhere");
            self.registry.refuse_route(link, &alias);
        }
    }

    /// Whether `caller`, announcing as `host`, may run `task`: one it hosts already, one
    /// the node is asking it to start (a Create that passed its checks), or one the
    /// policies let it create under the parent it names (by default its own subtree,
    /// `HOST/…`). Without this a container could squat an alias before it is created,
    /// or send as one a policy trusts.
    ///
    /// A child node announces the aliases of its own tree; those are not created here.
    fn may_host(
        &self,
        caller: &Principal,
        host: &Alias,
        task: &HostedTask,
    ) -> Result<(), ApiError> {
        if matches!(caller, Principal::Node(_))
            || self.registry.is_hosted_by(task.alias.as_str(), host)
            || self.task_grants.allows(&task.alias, host)
        {
            return Ok(());
        }
        let parent = task.parent.as_ref().unwrap_or(host);
        self.check_subtree(
            caller,
            Action::Create,
            task.alias.as_str(),
            Some(parent.as_str()),
        )
    }
}
