// hooks.go connects the Store to vcsim: registry callbacks that follow
// snapshots and VM config changes, and a per-call wrapper that adds
// QueryChangedDiskAreas to simulator.VirtualMachine without replacing the
// registry entry (and, in faults.go, fault-aware snapshot and consolidation
// methods the same way).
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"vmguard.io/lab/vsphere/internal/cbt"
	"vmguard.io/lab/vsphere/internal/diskfile"
)

// labHooks is registered with Registry.AddHandler.
type labHooks struct {
	store *Store
}

func (h *labHooks) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmguardLab", Value: "vmguard-lab-hooks"}
}

func (h *labHooks) PutObject(_ *simulator.Context, obj mo.Reference) {
	switch x := obj.(type) {
	case *simulator.VirtualMachineSnapshot:
		h.store.Freeze(x)
	case *simulator.Task:
		x.Info.Name = wsdlTaskName(x.Info.Name)
	case *simulator.VirtualMachine:
		// vcsim leaves these required enums empty, and pyVmomi then cannot
		// deserialize vm.runtime or vm.summary at all.
		for _, rt := range []*types.VirtualMachineRuntimeInfo{&x.Runtime, &x.Summary.Runtime} {
			if rt.FaultToleranceState == "" {
				rt.FaultToleranceState = types.VirtualMachineFaultToleranceStateNotConfigured
			}
			if rt.RecordReplayState == "" {
				rt.RecordReplayState = types.VirtualMachineRecordReplayStateInactive
			}
		}
	}
}

var vimTypes = types.TypeFunc()

// wsdlTaskName turns vcsim's task names ("CreateSnapshotEx", "ReconfigVm",
// "PowerOn") into the WSDL method names real vCenter reports and pyVmomi
// resolves ("CreateSnapshotEx_Task", "ReconfigVM_Task", "PowerOnVM_Task").
// pyVmomi turns an unknown name into an UnknownManagedMethod, on which
// pyVim.task.WaitForTask fails while the task is still running.
func wsdlTaskName(name string) string {
	if strings.HasSuffix(name, "_Task") {
		return name
	}
	for _, c := range []string{name + "_Task", strings.Replace(name, "Vm", "VM", 1) + "_Task", name + "VM_Task"} {
		if _, ok := vimTypes(c); ok {
			return c
		}
	}
	return name
}

func (h *labHooks) UpdateObject(_ *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	relevant, poweredOn, power := false, false, false
	for _, c := range changes {
		if strings.HasPrefix(c.Name, "snapshot") {
			h.store.adoptSnapshotFiles(vm)
		}
		switch c.Name {
		case "config.hardware.device", "config.changeVersion":
			relevant = true
		case "runtime.powerState":
			relevant, power = true, true
			poweredOn = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		}
	}
	if relevant {
		h.store.Reconcile(vm, poweredOn)
	}
	if power {
		h.store.followTools(vm.Self, poweredOn) // tools.go
	}
}

func (h *labHooks) RemoveObject(_ *simulator.Context, ref types.ManagedObjectReference) {
	switch ref.Type {
	case "VirtualMachineSnapshot":
		h.store.DropSnapshot(ref.Value)
	case "VirtualMachine":
		h.store.DropVM(ref.Value)
	}
}

// refusedLogins are SessionManager methods that would let a caller in
// without the lab's username and password.
var refusedLogins = map[string]bool{
	"LoginByToken":                true,
	"LoginExtensionByCertificate": true,
	"LoginExtensionBySubjectName": true,
	"LoginBySSPI":                 true,
	"ImpersonateUser":             true,
}

// methodHandler is installed as Registry.Handler.
func (s *Store) methodHandler(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	switch m.This.Type {
	case "VirtualMachine":
		if m.Name == "QueryChangedDiskAreas" {
			if vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine); ok {
				// Service.call replaces our handler with Session.Get(m.This)
				// for logged-in callers, which falls back to the registry's
				// VM. Pointing This at a reference no registry knows keeps the
				// wrapper; the request body still names the real VM, and the
				// wrapper's Self makes call() lock the real VM.
				m.This = types.ManagedObjectReference{Type: "VmguardCBTVirtualMachine", Value: m.This.Value}
				return &cbtVM{VirtualMachine: vm, store: s}, nil
			}
		}
		switch m.Name {
		case "CreateSnapshot_Task", "CreateSnapshotEx_Task", "ConsolidateVMDisks_Task", "RevertToCurrentSnapshot_Task":
			if vm, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachine); ok {
				// The same reference trick as for QueryChangedDiskAreas.
				m.This = types.ManagedObjectReference{Type: "VmguardFaultVirtualMachine", Value: m.This.Value}
				return &faultVM{VirtualMachine: vm, store: s}, nil
			}
		}
		if m.Name == "CloneVM_Task" {
			if req, ok := m.Body.(*types.CloneVM_Task); ok {
				s.expectClone(req)
			}
		}
	case "VirtualMachineSnapshot":
		if m.Name == "RevertToSnapshot_Task" {
			if snap, ok := ctx.Map.Get(m.This).(*simulator.VirtualMachineSnapshot); ok {
				// The same reference trick as for QueryChangedDiskAreas.
				m.This = types.ManagedObjectReference{Type: "VmguardRevertSnapshot", Value: m.This.Value}
				return &revertSnapshot{VirtualMachineSnapshot: snap, store: s}, nil
			}
		}
	case "GuestProcessManager":
		switch m.Name {
		case "StartProgramInGuest", "ListProcessesInGuest", "TerminateProcessInGuest":
			if pm, ok := ctx.Map.Get(m.This).(*simulator.GuestProcessManager); ok {
				ops := s.guest
				if ops == nil {
					ops = &guestOps{} // no account: every login is refused
				}
				// The same reference trick as for QueryChangedDiskAreas.
				m.This = types.ManagedObjectReference{Type: "VmguardGuestProcessManager", Value: m.This.Value}
				return &guestPM{GuestProcessManager: pm, ops: ops}, nil
			}
		}
	case "GuestFileManager":
		switch m.Name {
		case "InitiateFileTransferFromGuest", "DeleteFileInGuest":
			if fm, ok := ctx.Map.Get(m.This).(*simulator.GuestFileManager); ok {
				ops := s.guest
				if ops == nil {
					ops = &guestOps{} // no account: every login is refused
				}
				// The same reference trick as for QueryChangedDiskAreas.
				m.This = types.ManagedObjectReference{Type: "VmguardGuestFileManager", Value: m.This.Value}
				return &guestFM{GuestFileManager: fm, pm: &guestPM{ops: ops}}, nil
			}
		}
	case "SessionManager":
		if refusedLogins[m.Name] {
			return nil, new(types.InvalidLogin)
		}
	}
	return nil, nil
}

// cbtVM wraps a VM for the duration of one call.
type cbtVM struct {
	*simulator.VirtualMachine
	store *Store
}

// QueryChangedDiskAreas answers from the writes recorded in the disk's CBT
// log up to the snapshot, or from the allocated extents of the snapshot's
// frozen copy when changeId is "*".
func (vm *cbtVM) QueryChangedDiskAreas(ctx *simulator.Context, req *types.QueryChangedDiskAreas) soap.HasFault {
	body := new(methods.QueryChangedDiskAreasBody)
	info, msg, fault := vm.store.changedAreas(&vm.VirtualMachine.VirtualMachine, req)
	if fault != nil {
		body.Fault_ = simulator.Fault(msg, fault)
		return body
	}
	body.Res = &types.QueryChangedDiskAreasResponse{Returnval: *info}
	return body
}

func invalidArgument(prop string) *types.InvalidArgument {
	return &types.InvalidArgument{InvalidProperty: prop}
}

func (s *Store) changedAreas(vm *mo.VirtualMachine, req *types.QueryChangedDiskAreas) (*types.DiskChangeInfo, string, types.BaseMethodFault) {
	snapRef := req.Snapshot
	if snapRef == nil && vm.Snapshot != nil {
		snapRef = vm.Snapshot.CurrentSnapshot
	}
	if snapRef == nil {
		return nil, "a snapshot is required", invalidArgument("snapshot")
	}
	ss := s.lookupSnap(snapRef.Value)
	if ss == nil || ss.vm != vm.Self {
		return nil, fmt.Sprintf("snapshot %s is not a snapshot of %s", snapRef.Value, vm.Self.Value),
			invalidArgument("snapshot")
	}
	if ss.err != nil {
		return nil, fmt.Sprintf("snapshot %s has no frozen disks: %v", snapRef.Value, ss.err),
			&types.FileFault{File: snapRef.Value}
	}
	fd := ss.disks[req.DeviceKey]
	if fd == nil {
		return nil, fmt.Sprintf("no disk with key %d in snapshot %s", req.DeviceKey, snapRef.Value),
			invalidArgument("deviceKey")
	}
	if fd.changeID == nil {
		// What ESXi answers when the disk has no CBT data: a file fault.
		return nil, fmt.Sprintf("Error caused by file %s: change tracking was not active", fd.fileName),
			&types.FileFault{File: fd.fileName}
	}
	if req.StartOffset < 0 || req.StartOffset >= fd.capacity || req.StartOffset%512 != 0 {
		return nil, fmt.Sprintf("startOffset %d is outside the disk (capacity %d)", req.StartOffset, fd.capacity),
			invalidArgument("startOffset")
	}
	var areas []cbt.Extent
	if req.ChangeId == "*" {
		var err error
		areas, err = allocatedAreas(fd.path, req.StartOffset, min(req.StartOffset+cbt.MaxPageWindow, fd.capacity), fd.capacity)
		if err != nil {
			return nil, err.Error(), &types.FileFault{File: fd.fileName}
		}
	} else {
		id, err := cbt.ParseChangeID(req.ChangeId)
		bad := func(why string) (*types.DiskChangeInfo, string, types.BaseMethodFault) {
			return nil, fmt.Sprintf("invalid changeId %q: %s", req.ChangeId, why), invalidArgument("changeId")
		}
		switch {
		case err != nil:
			return bad(err.Error())
		case id.Epoch != fd.changeID.Epoch:
			return bad("it belongs to another CBT epoch of this disk (reset, resized or replaced)")
		case id.Seq > fd.changeID.Seq:
			return bad(fmt.Sprintf("it is newer than the snapshot's changeId %s", fd.changeID))
		case !fd.log.Knows(id.Seq):
			return bad("the disk's change tracking has no history back to it")
		}
		areas = fd.log.Changed(id.Seq, fd.changeID.Seq, fd.capacity)
	}
	p := cbt.Paginate(areas, req.StartOffset, fd.capacity, cbt.MaxAreasPerPage, cbt.MaxPageWindow)
	info := &types.DiskChangeInfo{StartOffset: p.StartOffset, Length: p.Length}
	for _, a := range p.Areas {
		info.ChangedArea = append(info.ChangedArea, types.DiskChangeExtent{Start: a.Start, Length: a.Length})
	}
	return info, "", nil
}

// allocatedAreas lists the allocated blocks of a frozen copy in [start, end),
// rounded out to CBT blocks.
func allocatedAreas(path string, start, end, capacity int64) ([]cbt.Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	exts, err := diskfile.DataExtents(f, start, end)
	if err != nil {
		return nil, err
	}
	areas := make([]cbt.Extent, 0, len(exts))
	for _, e := range exts {
		areas = append(areas, cbt.RoundOut(e.Start, e.Length, cbt.BlockSize))
	}
	return cbt.Normalize(areas, capacity), nil
}
