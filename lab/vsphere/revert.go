// revert.go gives vcsim's RevertToSnapshot_Task and RevertToCurrentSnapshot_Task
// what a revert does on ESXi to the disks: each disk gets the snapshot's frozen
// copy back, and its Changed Block Tracking goes back to the snapshot's state.
//
// CBT after a revert (the lab's model, docs/lab.md): the disk's change id is
// the snapshot's again (same epoch, the snapshot's sequence number), so a
// backup right after the revert sees the sequence number go backwards. Every
// id issued after the snapshot is unknown from then on (QueryChangedDiskAreas
// refuses it with InvalidArgument), and new writes take the epoch's next
// numbers, so no id ever names two different histories. A snapshot taken
// before CBT was active leaves the disk with a new epoch.
//
// vcsim's own revert only moves snapshot.currentSnapshot; the power state and
// the rest of the config are left as vcsim leaves them. A revert across a disk
// added, removed or resized since the snapshot is refused (not modelled).
package main

import (
	"log"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"vmguard.io/lab/vsphere/internal/diskfile"
)

// revertSnapshot wraps a snapshot for the duration of one call (methodHandler).
type revertSnapshot struct {
	*simulator.VirtualMachineSnapshot
	store *Store
}

func (v *revertSnapshot) RevertToSnapshotTask(ctx *simulator.Context, req *types.RevertToSnapshot_Task) soap.HasFault {
	vm, ok := ctx.Map.Get(v.Vm).(*simulator.VirtualMachine)
	if !ok {
		return &methods.RevertToSnapshot_TaskBody{Fault_: simulator.Fault("", &types.ManagedObjectNotFound{Obj: v.Vm})}
	}
	task := v.store.revertTask(ctx, vm, v.Self)
	return &methods.RevertToSnapshot_TaskBody{Res: &types.RevertToSnapshot_TaskResponse{Returnval: task}}
}

// RevertToCurrentSnapshotTask on faultVM (the VM's per-call wrapper).
func (vm *faultVM) RevertToCurrentSnapshotTask(ctx *simulator.Context, _ *types.RevertToCurrentSnapshot_Task) soap.HasFault {
	body := &methods.RevertToCurrentSnapshot_TaskBody{}
	if vm.Snapshot == nil || vm.Snapshot.CurrentSnapshot == nil {
		body.Fault_ = simulator.Fault("snapshot not found", &types.NotFound{})
		return body
	}
	task := vm.store.revertTask(ctx, vm.VirtualMachine, *vm.Snapshot.CurrentSnapshot)
	body.Res = &types.RevertToCurrentSnapshot_TaskResponse{Returnval: task}
	return body
}

// revertTask runs the revert as a task holding the VM's lock, like vcsim's.
func (s *Store) revertTask(ctx *simulator.Context, vm *simulator.VirtualMachine, snap types.ManagedObjectReference) types.ManagedObjectReference {
	task := simulator.CreateTask(vm, "revertToSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if fault := s.Revert(vm, snap.Value); fault != nil {
			return nil, fault
		}
		ctx.Update(vm, []types.PropertyChange{{Name: "snapshot.currentSnapshot", Val: snap}})
		return nil, nil
	})
	return task.Run(ctx)
}

// Revert copies the snapshot's frozen disks back into the VM's live disks and
// rewinds their CBT (see the file comment). The caller holds vcsim's lock of
// the VM.
func (s *Store) Revert(vm *simulator.VirtualMachine, snapshot string) types.BaseMethodFault {
	ss := s.lookupSnap(snapshot)
	if ss == nil || ss.vm != vm.Self {
		return &types.NotFound{}
	}
	if ss.err != nil {
		return &types.FileFault{File: snapshot}
	}
	st := s.vm(vm.Self)
	st.mu.Lock()
	defer st.mu.Unlock()
	s.reconcileLocked(st, &vm.VirtualMachine)
	if len(ss.disks) != len(st.disks) {
		return &types.NotSupported{}
	}
	for key, fd := range ss.disks {
		if d := st.disks[key]; d == nil || d.capacity != fd.capacity {
			return &types.NotSupported{}
		}
	}
	for key, fd := range ss.disks {
		d := st.disks[key]
		if err := s.materialize(st, d); err != nil {
			return &types.FileFault{File: d.fileName}
		}
		if err := diskfile.Copy(fd.path, d.dataPath, d.capacity); err != nil {
			log.Printf("revert %s of %s: disk %d: %v", snapshot, vm.Self.Value, key, err)
			return &types.FileFault{File: d.fileName}
		}
		switch {
		case d.log == nil: // CBT is off now: nothing to rewind
		case fd.changeID == nil || fd.log == nil:
			s.newEpoch(d) // the snapshot predates tracking: nothing to continue from
		default:
			d.log = fd.log.Fork(fd.changeID.Seq)
			d.published = d.log.Current().String()
		}
	}
	s.publish(st, vm.Config)
	return nil
}
