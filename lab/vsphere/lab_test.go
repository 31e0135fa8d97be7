package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
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
