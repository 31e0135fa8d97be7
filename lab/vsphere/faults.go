// faults.go lets tests make a VM misbehave the way ESXi does: quiesced
// snapshots that fail (VMware Tools cannot freeze the guest), disks that need
// consolidation, consolidation that fails, and a guest whose tools never
// start (a VM that does not boot). The settings are per VM, set
// through the control API (POST /vms/{moref}/faults), and kept in vmState
// under vmState.mu; consolidationNeeded itself lives in the VM's runtime, where
// the property collector reports it.
//
// vcsim has no ConsolidateVMDisks_Task, and its CreateSnapshot(Ex)_Task always
// succeeds, so methodHandler hands those calls to faultVM, a per-call wrapper
// like cbtVM (hooks.go).
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// What ESXi and vCenter say in these cases (task.info.error.localizedMessage).
const (
	quiesceFaultMsg = "An error occurred while quiescing the virtual machine. " +
		"See the virtual machine's event log for details."
	consolidateFaultMsg = "An error occurred while consolidating disks: Failed to lock the file"
)

// vmFaults are the per-VM fault settings (guarded by vmState.mu).
type vmFaults struct {
	quiesce     bool // a quiesced snapshot fails with ApplicationQuiesceFault
	consolidate bool // ConsolidateVMDisks_Task fails with FileLocked
	toolsDown   bool // the guest's tools never come up after power-on (tools.go)
}

// faultsView is the control API's view and request body; in a request every
// field is optional and only the fields given change.
type faultsView struct {
	QuiesceFault        *bool `json:"quiesceFault"`
	ConsolidationNeeded *bool `json:"consolidationNeeded"`
	ConsolidateFault    *bool `json:"consolidateFault"`
	ToolsDown           *bool `json:"toolsDown"`
}

func viewFaults(vm *simulator.VirtualMachine, st *vmState) faultsView {
	q, n, c, d := st.faults.quiesce, vm.Runtime.ConsolidationNeeded, st.faults.consolidate, st.faults.toolsDown
	return faultsView{QuiesceFault: &q, ConsolidationNeeded: &n, ConsolidateFault: &c, ToolsDown: &d}
}

// consolidationChanges sets runtime.consolidationNeeded and its copy in the
// summary, which is what a property collector reports.
func consolidationChanges(needed bool) []types.PropertyChange {
	return []types.PropertyChange{
		{Name: "runtime.consolidationNeeded", Val: needed},
		{Name: "summary.runtime.consolidationNeeded", Val: needed},
	}
}

func (c *control) getFaults(r *http.Request) (any, error) {
	var v faultsView
	err := c.lockedVM(r, func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		v = viewFaults(vm, st)
		return nil
	})
	return v, err
}

func (c *control) setFaults(r *http.Request) (any, error) {
	var req faultsView
	if err := decodeStrict(r, &req); err != nil {
		return nil, err
	}
	var v faultsView
	var ctx *simulator.Context
	var vm *simulator.VirtualMachine
	err := c.lockedVM(r, func(x *simulator.Context, m *simulator.VirtualMachine, st *vmState) error {
		ctx, vm = x, m
		if req.QuiesceFault != nil {
			st.faults.quiesce = *req.QuiesceFault
		}
		if req.ConsolidateFault != nil {
			st.faults.consolidate = *req.ConsolidateFault
		}
		if req.ToolsDown != nil {
			st.faults.toolsDown = *req.ToolsDown
		}
		v = viewFaults(m, st)
		return nil
	})
	if err != nil || req.ConsolidationNeeded == nil {
		return v, err
	}
	// Published through the registry so property collectors see it; the
	// registry hooks ignore runtime changes, so no Store lock is needed.
	ctx.WithLock(vm, func() {
		ctx.Update(vm, consolidationChanges(*req.ConsolidationNeeded))
	})
	v.ConsolidationNeeded = req.ConsolidationNeeded
	return v, nil
}

// faultVM wraps a VM for the duration of one call (see methodHandler).
type faultVM struct {
	*simulator.VirtualMachine
	store *Store
}

func (vm *faultVM) faults() vmFaults {
	st := vm.store.vm(vm.Self)
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.faults
}

// CreateSnapshotTask fails a quiesced snapshot of a VM set to; the rest is
// vcsim's (whose CreateSnapshotTask calls its own CreateSnapshotExTask, not
// this wrapper's, hence both here).
func (vm *faultVM) CreateSnapshotTask(ctx *simulator.Context, req *types.CreateSnapshot_Task) soap.HasFault {
	if req.Quiesce && vm.faults().quiesce {
		return &methods.CreateSnapshot_TaskBody{Res: &types.CreateSnapshot_TaskResponse{
			Returnval: vm.failedTask(ctx, "CreateSnapshot_Task", quiesceFaultMsg, new(types.ApplicationQuiesceFault)),
		}}
	}
	return vm.VirtualMachine.CreateSnapshotTask(ctx, req)
}

func (vm *faultVM) CreateSnapshotExTask(ctx *simulator.Context, req *types.CreateSnapshotEx_Task) soap.HasFault {
	if req.QuiesceSpec != nil && vm.faults().quiesce {
		return &methods.CreateSnapshotEx_TaskBody{Res: &types.CreateSnapshotEx_TaskResponse{
			Returnval: vm.failedTask(ctx, "CreateSnapshotEx_Task", quiesceFaultMsg, new(types.ApplicationQuiesceFault)),
		}}
	}
	return vm.VirtualMachine.CreateSnapshotExTask(ctx, req)
}

// ConsolidateVMDisksTask clears consolidationNeeded, or fails like a disk
// still locked by someone else when the VM is set to.
func (vm *faultVM) ConsolidateVMDisksTask(ctx *simulator.Context, _ *types.ConsolidateVMDisks_Task) soap.HasFault {
	body := &methods.ConsolidateVMDisks_TaskBody{}
	if vm.faults().consolidate {
		file := ""
		if vm.Config != nil && vm.Config.Files.VmPathName != "" {
			file = vm.Config.Files.VmPathName
		}
		fault := &types.FileLocked{FileFault: types.FileFault{File: file}}
		body.Res = &types.ConsolidateVMDisks_TaskResponse{
			Returnval: vm.failedTask(ctx, "ConsolidateVMDisks_Task", consolidateFaultMsg, fault),
		}
		return body
	}
	task := simulator.CreateTask(vm.VirtualMachine, "consolidateVMDisks", func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
		ctx.Update(vm.VirtualMachine, consolidationChanges(false))
		return nil, nil
	})
	body.Res = &types.ConsolidateVMDisks_TaskResponse{Returnval: task.Run(ctx)}
	return body
}

// failedTask registers a task that has already failed with fault and msg.
// vcsim's Task.Run would set the error's localizedMessage to the Go type name
// ("*types.ApplicationQuiesceFault"); clients show ESXi's message instead.
func (vm *faultVM) failedTask(ctx *simulator.Context, name, msg string, fault types.BaseMethodFault) types.ManagedObjectReference {
	if ctx.Map.Path != vim25.Path {
		ctx = ctx.For(vim25.Path) // tasks live in the vim25 namespace
	}
	now := time.Now()
	task := simulator.CreateTask(vm.VirtualMachine, name, nil)
	// Complete before the registry (and so any property collector) sees it.
	task.Self = types.ManagedObjectReference{Type: "Task", Value: fmt.Sprintf("task-lab-%d", failedTasks.Add(1))}
	task.Info.Key, task.Info.Task = task.Self.Value, task.Self
	task.Info.State = types.TaskInfoStateError
	task.Info.StartTime = &now
	task.Info.CompleteTime = &now
	task.Info.Error = &types.LocalizedMethodFault{Fault: fault, LocalizedMessage: msg}
	return ctx.Map.Put(task).Reference()
}

var failedTasks atomic.Int64

// decodeStrict reads a JSON body and refuses fields it does not know, so a
// misspelt fault name is an error rather than a no-op.
func decodeStrict(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "body: %v", err)
	}
	return nil
}
