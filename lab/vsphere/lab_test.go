package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"vmguard.io/lab/vsphere/internal/cbt"
)

func TestPlanIsDeterministic(t *testing.T) {
	cfg := inventoryConfig{vms: 50, seed: 42, diskCapacity: 1 << 30}
	plans := func(seed uint64) []vmPlan {
		cfg.seed = seed
		rng := newRand(seed)
		var out []vmPlan
		for i := range cfg.vms {
			out = append(out, planVM(i, cfg, rng))
		}
		return out
	}
	a, b := plans(42), plans(42)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seed, different inventory")
	}
	if reflect.DeepEqual(a, plans(43)) {
		t.Fatal("different seeds, same inventory")
	}
	if !a[templateIndex].template || a[templateIndex].poweredOn {
		t.Errorf("VM %d must be a powered-off template: %+v", templateIndex, a[templateIndex])
	}
	if escapeName(a[slashIndex].name) != "web%2ffrontend-0002" {
		t.Errorf("slash VM is %q", a[slashIndex].name)
	}
	if isASCII(a[unicodeIndex].name) {
		t.Errorf("unicode VM is %q", a[unicodeIndex].name)
	}
}

func isASCII(s string) bool {
	for _, r := range s {
		if r > 127 {
			return false
		}
	}
	return true
}

func TestWSDLTaskNames(t *testing.T) {
	for in, want := range map[string]string{
		"CreateSnapshotEx":   "CreateSnapshotEx_Task",
		"ReconfigVm":         "ReconfigVM_Task",
		"PowerOn":            "PowerOnVM_Task",
		"RemoveSnapshot":     "RemoveSnapshot_Task",
		"CloneVM_Task":       "CloneVM_Task",
		"NoSuchThingAtAll42": "NoSuchThingAtAll42",
	} {
		if got := wsdlTaskName(in); got != want {
			t.Errorf("wsdlTaskName(%q) = %q, want %q", in, got, want)
		}
	}
}

// labFixture runs the simulator in-process: vcsim with the lab's hooks and a
// small inventory, the control API on an httptest server.
type labFixture struct {
	model *simulator.Model
	store *Store
	c     *vim25.Client
	ctl   *httptest.Server
}

func newLab(t *testing.T, vms int) *labFixture {
	t.Helper()
	meta := t.TempDir()
	t.Setenv("TMPDIR", meta)
	m := simulator.VPX()
	m.Autostart, m.Machine, m.Cluster, m.ClusterHost, m.Host = false, 0, 1, 1, 1
	if err := m.Create(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Remove)
	store, err := NewStore(m.Map(), t.TempDir(), meta)
	if err != nil {
		t.Fatal(err)
	}
	m.Map().AddHandler(&labHooks{store: store})
	m.Map().Handler = store.methodHandler
	ctx := context.Background()
	store.BeginBulk(2)
	_, err = buildInventory(ctx, m, inventoryConfig{vms: vms, seed: 1, diskCapacity: 1 << 30})
	store.EndBulk()
	if err != nil {
		t.Fatal(err)
	}
	store.ActivateAll()
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		t.Fatal(err)
	}
	ctl := httptest.NewServer((&control{store: store}).routes())
	t.Cleanup(ctl.Close)
	return &labFixture{model: m, store: store, c: c, ctl: ctl}
}

func (f *labFixture) call(t *testing.T, method, path string, body []byte, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, f.ctl.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil && resp.StatusCode < 300 {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

func (f *labFixture) snapshot(t *testing.T, vm *object.VirtualMachine) (types.ManagedObjectReference, string, int32) {
	t.Helper()
	ctx := context.Background()
	task, err := vm.CreateSnapshot(ctx, "t", "", false, false)
	if err != nil {
		t.Fatal(err)
	}
	res, err := waitTask(f.model.Map(), task.Reference())
	if err != nil {
		t.Fatal(err)
	}
	ref := res.(types.ManagedObjectReference)
	var snap mo.VirtualMachineSnapshot
	if err := vm.Properties(ctx, ref, []string{"config"}, &snap); err != nil {
		t.Fatal(err)
	}
	for _, d := range snap.Config.Hardware.Device {
		if disk, b := flatDisk(d); disk != nil {
			return ref, b.ChangeId, disk.Key
		}
	}
	t.Fatal("snapshot without disk")
	return ref, "", 0
}

func (f *labFixture) changedAreas(t *testing.T, vm, snap types.ManagedObjectReference, key int32, id string, capacity int64) ([]cbt.Extent, int, error) {
	t.Helper()
	var areas []cbt.Extent
	calls := 0
	for off := int64(0); off < capacity; {
		res, err := methods.QueryChangedDiskAreas(context.Background(), f.c, &types.QueryChangedDiskAreas{
			This: vm, Snapshot: &snap, DeviceKey: key, StartOffset: off, ChangeId: id,
		})
		if err != nil {
			return nil, calls, err
		}
		calls++
		for _, a := range res.Returnval.ChangedArea {
			areas = append(areas, cbt.Extent{Start: a.Start, Length: a.Length})
		}
		off += res.Returnval.Length
	}
	return cbt.Normalize(areas, capacity), calls, nil
}

func TestSnapshotFreezesAndChangedAreasFollowWrites(t *testing.T) {
	f := newLab(t, 8)
	var vms []vmView
	if code := f.call(t, "GET", "/vms", nil, &vms); code != 200 || len(vms) != 8 {
		t.Fatalf("GET /vms: %d, %d VMs", code, len(vms))
	}
	var v vmView
	for _, x := range vms {
		if x.CBTActive && !x.Template {
			v = x
			break
		}
	}
	if v.Moref == "" {
		t.Fatal("no VM with active CBT")
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(f.c, ref)
	disk := v.Disks[0]

	snap1, id1, key := f.snapshot(t, vm)
	if key != disk.Key || !strings.HasPrefix(id1, "52 ") {
		t.Fatalf("snapshot change id %q for disk %d", id1, key)
	}
	payload := bytes.Repeat([]byte{0xab}, 3000)
	offsets := []int64{0, 300<<20 + 7, disk.Capacity - 3000}
	for _, off := range offsets {
		if code := f.call(t, "POST", fmt.Sprintf("/vms/%s/disks/%d/write?offset=%d", v.Moref, key, off), payload, nil); code != 200 {
			t.Fatalf("write at %d: HTTP %d", off, code)
		}
	}
	snap2, id2, _ := f.snapshot(t, vm)

	got, calls, err := f.changedAreas(t, ref, snap2, key, id1, disk.Capacity)
	if err != nil {
		t.Fatal(err)
	}
	var want []cbt.Extent
	for _, off := range offsets {
		want = append(want, cbt.RoundOut(off, int64(len(payload)), cbt.BlockSize))
	}
	if want = cbt.Normalize(want, disk.Capacity); !reflect.DeepEqual(got, want) {
		t.Fatalf("changed areas %v, want %v", got, want)
	}
	if calls != 4 {
		t.Errorf("a 1 GiB disk takes 4 pages, took %d", calls)
	}

	var frozen []frozenView
	if code := f.call(t, "GET", "/snapshots/"+snap1.Value+"/disks", nil, &frozen); code != 200 {
		t.Fatalf("snapshot disks: HTTP %d", code)
	}
	for _, off := range offsets {
		if !bytes.Equal(readAt(t, frozen[0].Path, off, 3000), make([]byte, 3000)) ||
			!bytes.Equal(readAt(t, disk.Path, off, 3000), payload) {
			t.Errorf("at %d: frozen copy must hold zeros, live disk the write", off)
		}
	}

	// A CBT reset refuses the old chain, naming changeId.
	if code := f.call(t, "POST", fmt.Sprintf("/vms/%s/disks/%d/reset-cbt", v.Moref, key), nil, nil); code != 200 {
		t.Fatalf("reset-cbt: HTTP %d", code)
	}
	snap3, _, _ := f.snapshot(t, vm)
	_, _, err = f.changedAreas(t, ref, snap3, key, id2, disk.Capacity)
	if err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("old change id after reset: %v", err)
	}
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, off); err != nil {
		t.Fatal(err)
	}
	return buf
}

// vcsim renumbers layoutEx file keys on RefreshStorageInfo and used to delete
// whatever file then carried a removed snapshot's old key.
func TestRemovingSnapshotsKeepsLiveDiskFiles(t *testing.T) {
	f := newLab(t, 4)
	ctx := context.Background()
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	v := vms[len(vms)-1]
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(f.c, ref)
	snap1, _, _ := f.snapshot(t, vm)
	if err := vm.RefreshStorageInfo(ctx); err != nil {
		t.Fatal(err)
	}
	f.snapshot(t, vm)
	if err := vm.RefreshStorageInfo(ctx); err != nil {
		t.Fatal(err)
	}
	var frozen []frozenView
	f.call(t, "GET", "/snapshots/"+snap1.Value+"/disks", nil, &frozen)
	task, err := vm.RemoveAllSnapshot(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := waitTask(f.model.Map(), task.Reference()); err != nil {
		t.Fatal(err)
	}
	st := f.store.lookupVM(v.Moref)
	for _, d := range st.disks {
		for _, p := range []string{d.descriptor, d.flatPath, d.dataPath} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("live disk file gone: %v", err)
			}
		}
	}
	if _, err := os.Stat(frozen[0].Path); !os.IsNotExist(err) {
		t.Errorf("frozen copy %s survived its snapshot", frozen[0].Path)
	}
}

// setFaults posts a fault setting and returns the VM's settings afterwards.
func (f *labFixture) setFaults(t *testing.T, moref, body string) faultsView {
	t.Helper()
	var v faultsView
	if code := f.call(t, "POST", "/vms/"+moref+"/faults", []byte(body), &v); code != 200 {
		t.Fatalf("POST faults %s: HTTP %d", body, code)
	}
	return v
}

func taskError(t *testing.T, tk *object.Task) *types.LocalizedMethodFault {
	t.Helper()
	_, err := tk.WaitForResult(context.Background(), nil)
	if err == nil {
		t.Fatal("the task succeeded")
	}
	te, ok := err.(task.Error)
	if !ok {
		t.Fatalf("not a task error: %v", err)
	}
	return te.LocalizedMethodFault
}

func TestQuiesceFaultFailsOnlyQuiescedSnapshots(t *testing.T) {
	f := newLab(t, 4)
	ctx := context.Background()
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	v := vms[len(vms)-1]
	vm := object.NewVirtualMachine(f.c, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref})
	if code := f.call(t, "POST", "/vms/"+v.Moref+"/faults", []byte(`{"quiesceFualt": true}`), nil); code != 400 {
		t.Errorf("a misspelt fault must be refused, got HTTP %d", code)
	}
	if got := f.setFaults(t, v.Moref, `{"quiesceFault": true}`); !*got.QuiesceFault || *got.ConsolidateFault {
		t.Fatalf("faults after setting quiesceFault: %+v", got)
	}

	task, err := vm.CreateSnapshot(ctx, "q", "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	fault := taskError(t, task)
	if _, ok := fault.Fault.(*types.ApplicationQuiesceFault); !ok || !strings.Contains(fault.LocalizedMessage, "quiescing") {
		t.Fatalf("quiesced snapshot: %T %q", fault.Fault, fault.LocalizedMessage)
	}
	task, err = vm.CreateSnapshotEx(ctx, "qx", "", false, &types.VirtualMachineGuestQuiesceSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if fault := taskError(t, task); fault.Fault == nil {
		t.Fatal("CreateSnapshotEx with a quiesce spec must fail too")
	}
	var m mo.VirtualMachine
	if err := vm.Properties(ctx, vm.Reference(), []string{"snapshot"}, &m); err != nil {
		t.Fatal(err)
	}
	if m.Snapshot != nil && len(m.Snapshot.RootSnapshotList) > 0 {
		t.Fatalf("a failed quiesced snapshot left %d snapshot(s)", len(m.Snapshot.RootSnapshotList))
	}
	f.snapshot(t, vm) // crash-consistent still works

	f.setFaults(t, v.Moref, `{"quiesceFault": false}`)
	task, err = vm.CreateSnapshot(ctx, "q2", "", false, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := task.WaitForResult(ctx, nil); err != nil {
		t.Fatalf("quiesced snapshot after clearing the fault: %v", err)
	}
}

func TestConsolidationNeededAndConsolidate(t *testing.T) {
	f := newLab(t, 4)
	ctx := context.Background()
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	v := vms[len(vms)-1]
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(f.c, ref)
	needed := func() (bool, bool) {
		t.Helper()
		var m mo.VirtualMachine
		if err := vm.Properties(ctx, ref, []string{"runtime", "summary.runtime"}, &m); err != nil {
			t.Fatal(err)
		}
		return m.Runtime.ConsolidationNeeded, m.Summary.Runtime.ConsolidationNeeded
	}
	consolidate := func() *object.Task {
		t.Helper()
		res, err := methods.ConsolidateVMDisks_Task(ctx, f.c, &types.ConsolidateVMDisks_Task{This: ref})
		if err != nil {
			t.Fatal(err)
		}
		return object.NewTask(f.c, res.Returnval)
	}

	f.setFaults(t, v.Moref, `{"consolidationNeeded": true, "consolidateFault": true}`)
	if rt, sum := needed(); !rt || !sum {
		t.Fatalf("consolidationNeeded runtime=%v summary=%v, want true", rt, sum)
	}
	fault := taskError(t, consolidate())
	if _, ok := fault.Fault.(*types.FileLocked); !ok || !strings.Contains(fault.LocalizedMessage, "consolidating") {
		t.Fatalf("failing consolidation: %T %q", fault.Fault, fault.LocalizedMessage)
	}
	if rt, _ := needed(); !rt {
		t.Fatal("a failed consolidation cleared consolidationNeeded")
	}

	got := f.setFaults(t, v.Moref, `{"consolidateFault": false}`)
	if !*got.ConsolidationNeeded || *got.ConsolidateFault {
		t.Fatalf("faults: %+v", got)
	}
	if _, err := consolidate().WaitForResult(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if rt, sum := needed(); rt || sum {
		t.Fatalf("after consolidation runtime=%v summary=%v, want false", rt, sum)
	}
	var view faultsView
	f.call(t, "GET", "/vms/"+v.Moref+"/faults", nil, &view)
	if *view.ConsolidationNeeded {
		t.Fatal("the control API still reports consolidationNeeded")
	}
}

func TestLostCBTHistoryRefusesOlderChangeIDs(t *testing.T) {
	f := newLab(t, 8)
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	var v vmView
	for _, x := range vms {
		if x.CBTActive && !x.Template {
			v = x
		}
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(f.c, ref)
	disk := v.Disks[0]
	_, id1, key := f.snapshot(t, vm)
	var after diskView
	if code := f.call(t, "POST", fmt.Sprintf("/vms/%s/disks/%d/lose-cbt-history", v.Moref, key), nil, &after); code != 200 {
		t.Fatalf("lose-cbt-history: HTTP %d", code)
	}
	if after.ChangeID == nil || *after.ChangeID == id1 || (*after.ChangeID)[:47] != id1[:47] {
		t.Fatalf("change id after losing history: %v (before %s): same epoch, new sequence", after.ChangeID, id1)
	}
	snap2, id2, _ := f.snapshot(t, vm)
	_, _, err := f.changedAreas(t, ref, snap2, key, id1, disk.Capacity)
	if err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("a change id from before the loss: %v", err)
	}
	f.call(t, "POST", fmt.Sprintf("/vms/%s/disks/%d/write?offset=0", v.Moref, key), []byte("x"), nil)
	snap3, _, _ := f.snapshot(t, vm)
	got, _, err := f.changedAreas(t, ref, snap3, key, id2, disk.Capacity)
	if err != nil || len(got) != 1 || got[0].Start != 0 {
		t.Fatalf("changes since a change id from after the loss: %v, %v", got, err)
	}
}

// guestLab is a lab whose guests take the account vmguard-guest/s3cret, with one
// powered-on and one powered-off VM of it.
func guestLab(t *testing.T) (*labFixture, *guestOps, string, string) {
	t.Helper()
	f := newLab(t, 4)
	ops, err := newGuestOps(t.TempDir(), "vmguard-guest", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	f.store.guest = ops
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	var on, off string
	for _, v := range vms {
		if v.PowerState == "poweredOn" && on == "" {
			on = v.Moref
		}
		if v.PowerState == "poweredOff" && !v.Template && off == "" {
			off = v.Moref
		}
	}
	if on == "" || off == "" {
		t.Fatalf("need a powered-on and a powered-off VM: %+v", vms)
	}
	return f, ops, on, off
}

func TestGuestProgramsRunLocallyAndAreRecorded(t *testing.T) {
	f, ops, on, off := guestLab(t)
	ctx := context.Background()
	ref := func(m string) types.ManagedObjectReference {
		return types.ManagedObjectReference{Type: "VirtualMachine", Value: m}
	}
	pm := types.ManagedObjectReference{Type: "GuestProcessManager", Value: "guestOperationsProcessManager"}
	good := &types.NamePasswordAuthentication{Username: "vmguard-guest", Password: "s3cret"}
	start := func(vm string, auth *types.NamePasswordAuthentication, prog, args string) (int64, error) {
		res, err := methods.StartProgramInGuest(ctx, f.c, &types.StartProgramInGuest{
			This: pm, Vm: ref(vm), Auth: auth,
			Spec: &types.GuestProgramSpec{ProgramPath: prog, Arguments: args},
		})
		if err != nil {
			return 0, err
		}
		return res.Returnval, nil
	}
	faultOf := func(err error) types.BaseMethodFault {
		if err == nil || !soap.IsSoapFault(err) {
			t.Fatalf("want a SOAP fault, got %v", err)
		}
		return soap.ToSoapFault(err).VimFault().(types.BaseMethodFault)
	}
	_, err := start(on, &types.NamePasswordAuthentication{Username: "vmguard-guest", Password: "wrong"}, "/bin/true", "")
	if _, ok := faultOf(err).(*types.InvalidGuestLogin); !ok {
		t.Fatalf("wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("the fault repeats the password: %v", err)
	}
	_, err = start(off, good, "/bin/true", "")
	if _, ok := faultOf(err).(*types.InvalidPowerState); !ok {
		t.Fatalf("powered-off VM: %v", err)
	}
	pid, err := start(on, good, "/bin/sh", `-c 'echo "$VMGUARD_LAB_VM" > marker; exit 3'`)
	if err != nil {
		t.Fatal(err)
	}
	sleeper, err := start(on, good, "/bin/sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := methods.TerminateProcessInGuest(ctx, f.c, &types.TerminateProcessInGuest{This: pm, Vm: ref(on), Auth: good, Pid: sleeper}); err != nil {
		t.Fatal(err)
	}
	ended := func() []types.GuestProcessInfo {
		for range 200 {
			res, err := methods.ListProcessesInGuest(ctx, f.c, &types.ListProcessesInGuest{This: pm, Vm: ref(on), Auth: good, Pids: []int64{pid, sleeper}})
			if err != nil {
				t.Fatal(err)
			}
			done := 0
			for _, p := range res.Returnval {
				if p.EndTime != nil {
					done++
				}
			}
			if done == 2 {
				return res.Returnval
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatal("the programs did not end")
		return nil
	}()
	codes := map[int64]int32{}
	for _, p := range ended {
		codes[p.Pid] = p.ExitCode
	}
	if codes[pid] != 3 || codes[sleeper] != 128+9 {
		t.Fatalf("exit codes: %v", codes)
	}
	marker, err := os.ReadFile(filepath.Join(ops.dir, on, "marker"))
	if err != nil || strings.TrimSpace(string(marker)) != on {
		t.Fatalf("marker in the guest dir: %q, %v", marker, err)
	}
	var hist []guestProc
	f.call(t, "GET", "/vms/"+on+"/guest/processes", nil, &hist)
	if len(hist) != 3 || hist[0].Fault != "InvalidGuestLogin" || hist[1].Pid != pid ||
		!reflect.DeepEqual(hist[1].Args, []string{"-c", `echo "$VMGUARD_LAB_VM" > marker; exit 3`}) ||
		!hist[2].Terminated || *hist[1].ExitCode != 3 {
		t.Fatalf("recorded calls: %+v", hist)
	}
	raw := new(bytes.Buffer)
	resp, err := http.Get(f.ctl.URL + "/vms/" + on + "/guest/processes")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.ReadFrom(resp.Body)
	resp.Body.Close()
	if strings.Contains(raw.String(), "s3cret") || strings.Contains(raw.String(), "wrong") {
		t.Fatalf("the control API shows a password: %s", raw)
	}
}

// revert runs RevertToSnapshot_Task (snap set) or RevertToCurrentSnapshot_Task.
func (f *labFixture) revert(t *testing.T, vm types.ManagedObjectReference, snap *types.ManagedObjectReference) {
	t.Helper()
	ctx := context.Background()
	var ref types.ManagedObjectReference
	if snap != nil {
		res, err := methods.RevertToSnapshot_Task(ctx, f.c, &types.RevertToSnapshot_Task{This: *snap})
		if err != nil {
			t.Fatal(err)
		}
		ref = res.Returnval
	} else {
		res, err := methods.RevertToCurrentSnapshot_Task(ctx, f.c, &types.RevertToCurrentSnapshot_Task{This: vm})
		if err != nil {
			t.Fatal(err)
		}
		ref = res.Returnval
	}
	if _, err := waitTask(f.model.Map(), ref); err != nil {
		t.Fatal(err)
	}
}

func TestRevertToSnapshotCopiesTheDiskBackAndRewindsCBT(t *testing.T) {
	f := newLab(t, 8)
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	var v vmView
	for _, x := range vms {
		if x.CBTActive && !x.Template {
			v = x
		}
	}
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	vm := object.NewVirtualMachine(f.c, ref)
	disk := v.Disks[0]
	write := func(off int64, b byte) {
		t.Helper()
		url := fmt.Sprintf("/vms/%s/disks/%d/write?offset=%d", v.Moref, disk.Key, off)
		if code := f.call(t, "POST", url, bytes.Repeat([]byte{b}, 4096), nil); code != 200 {
			t.Fatalf("write at %d: HTTP %d", off, code)
		}
	}
	changeID := func() string {
		t.Helper()
		var d diskView
		f.call(t, "GET", fmt.Sprintf("/vms/%s/disks/%d", v.Moref, disk.Key), nil, &d)
		return *d.ChangeID
	}
	seq := func(id string) uint64 {
		t.Helper()
		c, err := cbt.ParseChangeID(id)
		if err != nil {
			t.Fatal(err)
		}
		return c.Seq
	}

	write(0, 0x11)
	snapS, idS, key := f.snapshot(t, vm)
	write(64<<20, 0x22) // on the line the revert abandons
	_, idT, _ := f.snapshot(t, vm)
	f.revert(t, ref, &snapS)

	if got := readAt(t, disk.Path, 64<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("the write made after the snapshot is still on the disk after the revert")
	}
	if got := readAt(t, disk.Path, 0, 4096); !bytes.Equal(got, bytes.Repeat([]byte{0x11}, 4096)) {
		t.Fatal("the snapshot's data is not on the disk after the revert")
	}
	if changeID() != idS {
		t.Fatalf("change id after the revert %s, want the snapshot's %s", changeID(), idS)
	}
	snapU, idU, _ := f.snapshot(t, vm)
	if idU != idS || seq(idU) >= seq(idT) {
		t.Fatalf("a snapshot right after the revert has %s: want the snapshot's %s (backwards from %s)", idU, idS, idT)
	}
	if _, _, err := f.changedAreas(t, ref, snapU, key, idT, disk.Capacity); err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("a change id from the abandoned line: %v", err)
	}

	write(128<<20, 0x33)
	snapV, idV, _ := f.snapshot(t, vm)
	if seq(idV) <= seq(idT) {
		t.Fatalf("the first write after the revert reuses a number of the abandoned line: %s vs %s", idV, idT)
	}
	got, _, err := f.changedAreas(t, ref, snapV, key, idS, disk.Capacity)
	if want := []cbt.Extent{{Start: 128 << 20, Length: cbt.BlockSize}}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("changes since the snapshot after the revert: %v, %v; want %v", got, err, want)
	}
	if _, _, err := f.changedAreas(t, ref, snapV, key, idT, disk.Capacity); err == nil || !strings.Contains(err.Error(), "changeId") {
		t.Fatalf("an abandoned change id once the sequence has passed it: %v", err)
	}

	// RevertToCurrentSnapshot_Task goes back to the newest snapshot (V).
	write(256<<20, 0x44)
	f.revert(t, ref, nil)
	if got := readAt(t, disk.Path, 256<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("RevertToCurrentSnapshot left the later write on the disk")
	}
	if changeID() != idV {
		t.Fatalf("change id after reverting to the current snapshot %s, want %s", changeID(), idV)
	}
}

func TestToolsComeUpAfterPowerOnAndGoDownAtPowerOff(t *testing.T) {
	f := newLab(t, 4)
	ctx := context.Background()
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	off := ""
	for _, v := range vms {
		if v.PowerState == "poweredOff" && !v.Template && off == "" {
			off = v.Moref
		}
	}
	if off == "" {
		t.Fatalf("need a powered-off VM: %+v", vms)
	}
	vm := object.NewVirtualMachine(f.c, types.ManagedObjectReference{Type: "VirtualMachine", Value: off})
	tools := func() (string, types.ManagedEntityStatus) {
		var m mo.VirtualMachine
		if err := vm.Properties(ctx, vm.Reference(), []string{"guest.toolsRunningStatus", "guestHeartbeatStatus"}, &m); err != nil {
			t.Fatal(err)
		}
		run := ""
		if m.Guest != nil {
			run = m.Guest.ToolsRunningStatus
		}
		return run, m.GuestHeartbeatStatus
	}
	await := func(want string, beat types.ManagedEntityStatus) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			run, hb := tools()
			if run == want && hb == beat {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("tools %q heartbeat %q, want %q %q", run, hb, want, beat)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if run, _ := tools(); run == string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		t.Fatalf("tools running on a powered-off VM")
	}
	task, err := vm.PowerOn(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power on: %v", err)
	}
	await(string(types.VirtualMachineToolsRunningStatusGuestToolsRunning), types.ManagedEntityStatusGreen)
	task, err = vm.PowerOff(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off: %v", err)
	}
	await(string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning), types.ManagedEntityStatusGray)
}

func TestGuestFilesAreReadOnceThroughTheirURLAndDeleted(t *testing.T) {
	f := newLab(t, 4)
	ops, err := newGuestOps(t.TempDir(), "vmguard-guest", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	f.store.guest = ops
	ctl := httptest.NewServer(nil)
	t.Cleanup(ctl.Close)
	ops.files = &guestFiles{baseURL: ctl.URL, pending: map[string]guestTransfer{}}
	ctl.Config.Handler = (&control{store: f.store}).routes()
	ctx := context.Background()
	var vms []vmView
	f.call(t, "GET", "/vms", nil, &vms)
	on := ""
	for _, v := range vms {
		if v.PowerState == "poweredOn" && on == "" {
			on = v.Moref
		}
	}
	vm := types.ManagedObjectReference{Type: "VirtualMachine", Value: on}
	fm := types.ManagedObjectReference{Type: "GuestFileManager", Value: "guestOperationsFileManager"}
	good := &types.NamePasswordAuthentication{Username: "vmguard-guest", Password: "s3cret"}
	faultOf := func(err error) types.BaseMethodFault {
		if soap.IsSoapFault(err) {
			return soap.ToSoapFault(err).VimFault().(types.BaseMethodFault)
		}
		return nil
	}
	dir, err := ops.vmDir(on)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "check.out")
	if err := os.WriteFile(out, []byte("checked\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := methods.InitiateFileTransferFromGuest(ctx, f.c, &types.InitiateFileTransferFromGuest{This: fm, Vm: vm, Auth: good, GuestFilePath: out})
	if err != nil || res.Returnval.Size != 8 {
		t.Fatalf("initiate: %v %+v", err, res)
	}
	get := func() (int, string) {
		resp, err := http.Get(res.Returnval.Url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || body != "checked\n" {
		t.Fatalf("first GET: %d %q", code, body)
	}
	if code, _ := get(); code != 404 {
		t.Fatalf("second GET: %d, want 404 (one use)", code)
	}
	bad := &types.NamePasswordAuthentication{Username: "vmguard-guest", Password: "wrong"}
	_, err = methods.InitiateFileTransferFromGuest(ctx, f.c, &types.InitiateFileTransferFromGuest{This: fm, Vm: vm, Auth: bad, GuestFilePath: out})
	if _, ok := faultOf(err).(*types.InvalidGuestLogin); !ok {
		t.Fatalf("wrong password: %v", err)
	}
	_, err = methods.InitiateFileTransferFromGuest(ctx, f.c, &types.InitiateFileTransferFromGuest{This: fm, Vm: vm, Auth: good, GuestFilePath: "/etc/hostname"})
	if _, ok := faultOf(err).(*types.FileNotFound); !ok {
		t.Fatalf("a host file outside the guest's places: %v", err)
	}
	if _, err := methods.DeleteFileInGuest(ctx, f.c, &types.DeleteFileInGuest{This: fm, Vm: vm, Auth: good, FilePath: out}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("deleted file still there: %v", err)
	}
}

// A guest that powers off runs no program: the lab kills what it started there
// (a test's check script waiting for a file would otherwise outlive the test).
func TestPowerOffEndsTheGuestsPrograms(t *testing.T) {
	f, ops, on, _ := guestLab(t)
	ctx := context.Background()
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: on}
	pm := types.ManagedObjectReference{Type: "GuestProcessManager", Value: "guestOperationsProcessManager"}
	good := &types.NamePasswordAuthentication{Username: "vmguard-guest", Password: "s3cret"}
	res, err := methods.StartProgramInGuest(ctx, f.c, &types.StartProgramInGuest{
		This: pm, Vm: ref, Auth: good,
		Spec: &types.GuestProgramSpec{ProgramPath: "/bin/sleep", Arguments: "600"},
	})
	if err != nil {
		t.Fatal(err)
	}
	task, err := object.NewVirtualMachine(f.c, ref).PowerOff(ctx)
	if err != nil || task.Wait(ctx) != nil {
		t.Fatalf("power off: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs := ops.find(on, []int64{res.Returnval})
		if len(procs) == 1 && procs[0].ExitCode != nil {
			if *procs[0].ExitCode != 128+9 {
				t.Fatalf("exit code %d, want 137 (killed)", *procs[0].ExitCode)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the program still runs after power-off: %+v", procs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
