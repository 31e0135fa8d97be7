// tools.go models VMware Tools in the lab's guests: vcsim reports
// guest.toolsRunningStatus = guestToolsRunning only for container-backed VMs
// (container_virtual_machine.go, which needs docker); every other VM keeps
// guestToolsNotRunning and a gray heartbeat for ever. Here every VM's tools
// come up a short, fixed boot delay after it powers on (toolsStatus toolsOk,
// toolsRunningStatus guestToolsRunning, guestHeartbeatStatus green, in guest
// and in summary, as ESXi reports them) and go down at once when it powers
// off or suspends. A VM with the toolsDown fault (faults.go) keeps them down. The property names and values are vcsim's own toolsRunning
// / toolsNotRunning changes. Lab only: a real guest's tools start when its OS
// has booted.
package main

import (
	"context"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// toolsBootDelay is how long after power-on a lab guest's tools report
// running: long enough that a caller must wait for the heartbeat, short
// enough for tests.
const toolsBootDelay = 300 * time.Millisecond

func toolsChanges(running bool) []types.PropertyChange {
	status, run, beat := types.VirtualMachineToolsStatusToolsNotRunning,
		types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, types.ManagedEntityStatusGray
	if running {
		status, run, beat = types.VirtualMachineToolsStatusToolsOk,
			types.VirtualMachineToolsRunningStatusGuestToolsRunning, types.ManagedEntityStatusGreen
	}
	return []types.PropertyChange{
		{Name: "guest.toolsStatus", Val: status},
		{Name: "guest.toolsRunningStatus", Val: string(run)},
		{Name: "summary.guest.toolsStatus", Val: status},
		{Name: "summary.guest.toolsRunningStatus", Val: string(run)},
		{Name: "guestHeartbeatStatus", Val: beat},
		{Name: "summary.quickStats.guestHeartbeatStatus", Val: beat},
	}
}

// followTools is called (from the registry's UpdateObject hook) when a VM's
// power state changed. It updates the VM from a goroutine: the hook runs
// inside vcsim's own update and must not update the same object again.
func (s *Store) followTools(ref types.ManagedObjectReference, poweredOn bool) {
	if !poweredOn && s.guest != nil {
		s.guest.stopAll(ref.Value) // a guest that is off runs no program (guest.go)
	}
	gate := s.toolsGate
	go func() {
		if gate != nil {
			<-gate // until the simulator is up (store.go)
		}
		if poweredOn {
			time.Sleep(toolsBootDelay)
		}
		vm, ok := s.reg.Get(ref).(*simulator.VirtualMachine)
		if !ok {
			return // destroyed meanwhile
		}
		if poweredOn {
			st := s.vm(ref)
			st.mu.Lock()
			down := st.faults.toolsDown
			st.mu.Unlock()
			if down {
				return // a guest that does not boot (faults.go)
			}
		}
		ctx := &simulator.Context{Context: context.Background(), Map: s.reg}
		ctx.WithLock(vm, func() {
			// Only if the power state is still what called us: a VM powered
			// off within the delay keeps its tools down.
			on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
			if on != poweredOn {
				return
			}
			if vm.Guest == nil {
				vm.Guest = &types.GuestInfo{}
			}
			if vm.Summary.Guest == nil {
				vm.Summary.Guest = &types.VirtualMachineGuestSummary{}
			}
			ctx.Update(vm, toolsChanges(poweredOn))
		})
	}()
}
