"""What the kinds' controllers share; it imports none of them.

The Kubernetes API (:mod:`.kubeapi`, proxy Jobs :mod:`.jobs` and their pods
:mod:`.proxypods`, standard :mod:`.conditions`, :mod:`.peering`), connections from
VCenter and VMGuardRepository objects and their Secrets (:mod:`.access`, with
:mod:`.repository_spec`), the pure pieces of every proxy Job and its RBAC
(:mod:`.proxyjob`), the one clock (:mod:`.timing`), cron schedules (:mod:`.schedule`),
the latest vCenter sweeps (:mod:`.sweeps`), the one reading of a policy's spec that
other kinds need (:mod:`.policy_spec`), and what every kind's handlers share
(:mod:`.handlers`: wake-ups, the controllers this replica runs, events), the one-time
move of objects of the renamed kinds to their new names (:mod:`.migration`), every write
to a ProtectedVM (:mod:`.points`: a VM's restore points), and the
check of the installed CRDs against the operator's own at start (:mod:`.crdcheck`).
"""
