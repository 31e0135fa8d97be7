-- Argo CD health check for this kind of vmguard.io object (the file name says which).
-- A kind that ends: Pending -> ... -> Completed | Failed. It reads the kstatus
-- conditions the operator writes, in kstatus's order, so Argo CD agrees with Flux and
-- kubectl wait: Reconciling=True is Progressing, Stalled=True (a failure) Degraded.
-- Only Argo CD's health-script libraries are used (base, table: no string).
local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to take it up"
  return hs
end
if status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local found = {}
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    found[c.type] = c
  end
end
local function said(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
if found.Reconciling ~= nil and found.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = said(found.Reconciling)
  return hs
end
if found.Stalled ~= nil and found.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(found.Stalled)
  return hs
end
-- Written by an operator older than these conditions: the phase alone.
if status.phase == "Completed" then
  hs.status = "Healthy"
  hs.message = "Completed"
elseif status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Failed"
  if status.error ~= nil then
    hs.message = (status.error.reason or "Failed") .. ": " .. (status.error.message or "")
  end
else
  hs.status = "Progressing"
  hs.message = status.phase
end
return hs
