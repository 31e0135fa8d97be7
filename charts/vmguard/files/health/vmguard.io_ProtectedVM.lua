-- Argo CD health check for this kind of vmguard.io object (the file name says which).
-- A kind that stands: judged again on every sweep or pass, never done. It reads the
-- kstatus conditions the operator derives from Ready, in kstatus's order, so Argo CD
-- agrees with Flux and kubectl wait: Reconciling=True (not judged yet) is Progressing,
-- Stalled=True (Ready=False: cannot be used, the reason says why) Degraded,
-- Ready=True Healthy, and Ready=True with Paused=True (a paused policy) Suspended.
-- Only Argo CD's health-script libraries are used (base, table: no string).
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
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
for _, c in ipairs(status.conditions) do
  found[c.type] = c
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
local ready = found.Ready
if ready == nil or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = "Not judged yet"
elseif ready.status == "False" then
  -- Written by an operator older than Stalled.
  hs.status = "Degraded"
  hs.message = said(ready)
elseif found.Paused ~= nil and found.Paused.status == "True" then
  hs.status = "Suspended"
  hs.message = said(found.Paused)
else
  hs.status = "Healthy"
  hs.message = said(ready)
end
return hs
