-- Argo CD health check for kinfer's InferenceService and ModelVersion (both kinds carry the same
-- kstatus conditions). Install it under both keys of argocd-cm (docs/gitops.md, "Argo CD"):
--   resource.customizations.health.kinfer.dev_InferenceService
--   resource.customizations.health.kinfer.dev_ModelVersion
-- It reads what kstatus reads, in the same order, so Argo CD and Flux agree:
--   status older than the spec      -> Progressing (the operator has not seen this generation)
--   Stalled=True                    -> Degraded    (a rollback or refusal is held; the reason says why)
--   Reconciling=True                -> Progressing (verification, canary, promotion, pods starting)
--   Ready=True                      -> Healthy
--   anything else                   -> Progressing
local gen = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
   or (gen ~= nil and obj.status.observedGeneration < gen) then
  return {status = "Progressing", message = "waiting for the kinfer operator to observe the spec"}
end
local cond = {}
for _, c in ipairs(obj.status.conditions or {}) do
  cond[c.type] = c
end
local function say(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason or ""
end
if cond.Stalled ~= nil and cond.Stalled.status == "True" then
  return {status = "Degraded", message = say(cond.Stalled)}
end
if cond.Reconciling ~= nil and cond.Reconciling.status == "True" then
  return {status = "Progressing", message = say(cond.Reconciling)}
end
if cond.Ready ~= nil and cond.Ready.status == "True" then
  return {status = "Healthy", message = say(cond.Ready)}
end
if cond.Ready ~= nil then
  return {status = "Progressing", message = say(cond.Ready)}
end
return {status = "Progressing", message = "no Ready condition yet"}
