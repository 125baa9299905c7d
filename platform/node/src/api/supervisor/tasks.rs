//! Supervisor.Host: a host process announces the task containers it runs, so that
//! their aliases route to its stream.

use super::*;

impl SupervisorService {
    /// Each task's outcome in the order the request named them: refused here (a bad
    /// definition) or by the registry.
    pub(super) fn host_tasks(
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
            match convert::hosted_task(task) {
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
}
