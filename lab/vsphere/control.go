// control.go is the lab control endpoint: plain HTTP JSON on loopback, for
// tests to look at disks, act as the guest or the storage admin (guest writes,
// new images, resizes, CBT resets and lost CBT history) and set a VM's faults
// (faults.go). Requests that change a VM's config take vcsim's lock of the VM
// first, then the Store's, like SOAP calls.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	"vmguard.io/lab/vsphere/internal/diskfile"
)

// maxWriteBytes bounds one guest write; tests write kilobytes to megabytes.
const maxWriteBytes = 256 << 20

type diskView struct {
	Key      int32   `json:"key"`
	Label    string  `json:"label"`
	FileName string  `json:"fileName"`
	Capacity int64   `json:"capacity"`
	Path     string  `json:"path"`
	DiskUUID string  `json:"diskUuid"`
	ChangeID *string `json:"changeId"`
}

type vmView struct {
	Moref           string     `json:"moref"`
	Name            string     `json:"name"`
	InstanceUUID    string     `json:"instanceUuid"`
	CBTEnabled      bool       `json:"cbtEnabled"`
	CBTActive       bool       `json:"cbtActive"`
	HardwareVersion string     `json:"hardwareVersion"`
	PowerState      string     `json:"powerState"`
	Template        bool       `json:"template"`
	Disks           []diskView `json:"disks"`
}

type frozenView struct {
	Key      int32   `json:"key"`
	FileName string  `json:"fileName"`
	Path     string  `json:"path"`
	Capacity int64   `json:"capacity"`
	ChangeID *string `json:"changeId"`
}

// httpError carries a status code to the JSON error response.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

type control struct {
	store *Store
}

func (c *control) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /vms", c.handle(c.listVMs))
	mux.HandleFunc("GET /vms/{moref}", c.handle(c.getVM))
	mux.HandleFunc("GET /vms/{moref}/disks/{key}", c.handle(c.getDisk))
	mux.HandleFunc("POST /vms/{moref}/disks/{key}/write", c.handle(c.write))
	mux.HandleFunc("PUT /vms/{moref}/disks/{key}/image", c.handle(c.putImage))
	mux.HandleFunc("POST /vms/{moref}/disks/{key}/resize", c.handle(c.resize))
	mux.HandleFunc("POST /vms/{moref}/disks/{key}/reset-cbt", c.handle(c.resetCBT))
	mux.HandleFunc("POST /vms/{moref}/disks/{key}/lose-cbt-history", c.handle(c.loseCBTHistory))
	mux.HandleFunc("GET /vms/{moref}/faults", c.handle(c.getFaults))
	mux.HandleFunc("POST /vms/{moref}/faults", c.handle(c.setFaults))
	mux.HandleFunc("GET /vms/{moref}/guest/processes", c.handle(c.guestProcesses))
	mux.HandleFunc("GET /snapshots/{moref}/disks", c.handle(c.snapshotDisks))
	if c.store.guest != nil && c.store.guest.files != nil {
		mux.HandleFunc("GET /guestFile", c.store.guest.files.serve) // guestfiles.go
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	return mux
}

func (c *control) handle(f func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := f(r)
		if err != nil {
			code := http.StatusInternalServerError
			var he *httpError
			if errors.As(err, &he) {
				code = he.code
			}
			writeJSON(w, code, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// lockedVM runs f with vcsim's lock of the VM and the Store's lock held.
func (c *control) lockedVM(r *http.Request, f func(ctx *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error) error {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: r.PathValue("moref")}
	vm, ok := c.store.reg.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return errorf(http.StatusNotFound, "no VM %s", ref.Value)
	}
	ctx := &simulator.Context{Context: context.Background(), Map: c.store.reg}
	var err error
	ctx.WithLock(vm, func() {
		if vm.Config == nil {
			err = errorf(http.StatusNotFound, "VM %s has no config", ref.Value)
			return
		}
		st := c.store.vm(vm.Self)
		st.mu.Lock()
		defer st.mu.Unlock()
		c.store.reconcileLocked(st, &vm.VirtualMachine)
		err = f(ctx, vm, st)
		c.store.publish(st, vm.Config)
	})
	return err
}

func diskKey(r *http.Request, st *vmState) (*diskState, error) {
	key, err := strconv.ParseInt(r.PathValue("key"), 10, 32)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "bad disk key %q", r.PathValue("key"))
	}
	d := st.disks[int32(key)]
	if d == nil {
		return nil, errorf(http.StatusNotFound, "VM %s has no disk %d", st.ref.Value, key)
	}
	return d, nil
}

func (c *control) viewDisk(st *vmState, d *diskState) (diskView, error) {
	if err := c.store.materialize(st, d); err != nil {
		return diskView{}, err
	}
	v := diskView{
		Key: d.key, Label: d.label, FileName: d.fileName, Capacity: d.capacity,
		Path: d.dataPath, DiskUUID: d.uuid,
	}
	if d.log != nil {
		id := d.log.Current().String()
		v.ChangeID = &id
	}
	return v, nil
}

func (c *control) viewVM(vm *simulator.VirtualMachine, st *vmState) (vmView, error) {
	v := vmView{
		Moref: vm.Self.Value, Name: vm.Name, InstanceUUID: vm.Config.InstanceUuid,
		CBTEnabled: st.cbtEnabled, CBTActive: st.cbtActive, HardwareVersion: vm.Config.Version,
		PowerState: string(vm.Runtime.PowerState), Template: vm.Config.Template, Disks: []diskView{},
	}
	keys := make([]int, 0, len(st.disks))
	for k := range st.disks {
		keys = append(keys, int(k))
	}
	sort.Ints(keys)
	for _, k := range keys {
		d, err := c.viewDisk(st, st.disks[int32(k)])
		if err != nil {
			return v, err
		}
		v.Disks = append(v.Disks, d)
	}
	return v, nil
}

func (c *control) listVMs(r *http.Request) (any, error) {
	var refs []string
	for _, e := range c.store.reg.All("VirtualMachine") {
		refs = append(refs, e.Reference().Value)
	}
	// vm-<n>: order by number, which is creation order
	sort.Slice(refs, func(i, j int) bool {
		a, b := refs[i], refs[j]
		if len(a) != len(b) {
			return len(a) < len(b)
		}
		return a < b
	})
	out := make([]vmView, 0, len(refs))
	for _, ref := range refs {
		r.SetPathValue("moref", ref)
		v, err := c.getVM(r)
		var he *httpError
		if errors.As(err, &he) && he.code == http.StatusNotFound {
			continue // destroyed meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v.(vmView))
	}
	return out, nil
}

func (c *control) getVM(r *http.Request) (any, error) {
	var v vmView
	err := c.lockedVM(r, func(_ *simulator.Context, vm *simulator.VirtualMachine, st *vmState) error {
		var err error
		v, err = c.viewVM(vm, st)
		return err
	})
	return v, err
}

func (c *control) getDisk(r *http.Request) (any, error) {
	var v diskView
	err := c.lockedVM(r, func(_ *simulator.Context, _ *simulator.VirtualMachine, st *vmState) error {
		d, err := diskKey(r, st)
		if err != nil {
			return err
		}
		v, err = c.viewDisk(st, d)
		return err
	})
	return v, err
}

// write is a guest write into the live disk, tracked by CBT when active.
func (c *control) write(r *http.Request) (any, error) {
	off, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || off < 0 {
		return nil, errorf(http.StatusBadRequest, "offset must be a non-negative integer")
	}
	data, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxWriteBytes))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "body: %v", err)
	}
	var v diskView
	err = c.lockedVM(r, func(_ *simulator.Context, _ *simulator.VirtualMachine, st *vmState) error {
		d, err := diskKey(r, st)
		if err != nil {
			return err
		}
		if off+int64(len(data)) > d.capacity {
			return errorf(http.StatusBadRequest, "write [%d, %d) beyond capacity %d", off, off+int64(len(data)), d.capacity)
		}
		if err := c.store.materialize(st, d); err != nil {
			return err
		}
		if len(data) > 0 {
			f, err := os.OpenFile(d.dataPath, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			_, werr := f.WriteAt(data, off)
			if err := f.Close(); werr == nil {
				werr = err
			}
			if werr != nil {
				return werr
			}
			if d.log != nil {
				d.log.Record(off, int64(len(data)))
			}
		}
		v, err = c.viewDisk(st, d)
		return err
	})
	return v, err
}

// setCapacity changes a disk's capacity in the VM config and its descriptor;
// reconcileLocked then grows the image and starts a new CBT epoch.
func (c *control) setCapacity(vm *simulator.VirtualMachine, st *vmState, d *diskState, capacity int64) error {
	for _, dev := range vm.Config.Hardware.Device {
		if disk, _ := flatDisk(dev); disk != nil && disk.Key == d.key {
			disk.CapacityInBytes = capacity
			disk.CapacityInKB = capacity / 1024
		}
	}
	if err := updateDescriptor(d.descriptor, capacity); err != nil {
		return err
	}
	c.store.reconcileLocked(st, &vm.VirtualMachine)
	return nil
}

// notify tells vcsim's property collectors that the devices changed. It runs
// after the Store's lock is released, because the update comes back to
// Store.Reconcile through the registry hooks.
func notify(ctx *simulator.Context, vm *simulator.VirtualMachine) {
	ctx.WithLock(vm, func() {
		ctx.Update(vm, []types.PropertyChange{{Name: "config.hardware.device", Val: vm.Config.Hardware.Device}})
	})
}

func (c *control) putImage(r *http.Request) (any, error) {
	var req struct {
		Path string `json:"path"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return nil, errorf(http.StatusBadRequest, "body: %v", err)
	}
	if !filepath.IsAbs(req.Path) {
		return nil, errorf(http.StatusBadRequest, "path must be absolute")
	}
	fi, err := os.Stat(req.Path)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
		return nil, errorf(http.StatusBadRequest, "%s is not a non-empty regular file", req.Path)
	}
	capacity := (fi.Size() + 511) / 512 * 512
	var v diskView
	var ctx *simulator.Context
	var vm *simulator.VirtualMachine
	err = c.lockedVM(r, func(x *simulator.Context, m *simulator.VirtualMachine, st *vmState) error {
		ctx, vm = x, m
		d, err := diskKey(r, st)
		if err != nil {
			return err
		}
		if err := c.store.materialize(st, d); err != nil {
			return err
		}
		if err := diskfile.Copy(req.Path, d.dataPath, capacity); err != nil {
			return err
		}
		if err := c.setCapacity(m, st, d, capacity); err != nil {
			return err
		}
		if d.log != nil {
			c.store.newEpoch(d) // new content: no change id before this one is valid
		}
		v, err = c.viewDisk(st, d)
		return err
	})
	if err == nil {
		notify(ctx, vm)
	}
	return v, err
}

func (c *control) resize(r *http.Request) (any, error) {
	var req struct {
		Capacity int64 `json:"capacity"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		return nil, errorf(http.StatusBadRequest, "body: %v", err)
	}
	if req.Capacity <= 0 || req.Capacity%1024 != 0 {
		return nil, errorf(http.StatusBadRequest, "capacity must be a positive multiple of 1024")
	}
	var v diskView
	var ctx *simulator.Context
	var vm *simulator.VirtualMachine
	err := c.lockedVM(r, func(x *simulator.Context, m *simulator.VirtualMachine, st *vmState) error {
		ctx, vm = x, m
		d, err := diskKey(r, st)
		if err != nil {
			return err
		}
		if req.Capacity <= d.capacity {
			return errorf(http.StatusBadRequest, "disks only grow: %d <= %d", req.Capacity, d.capacity)
		}
		if err := c.setCapacity(m, st, d, req.Capacity); err != nil {
			return err
		}
		v, err = c.viewDisk(st, d)
		return err
	})
	if err == nil {
		notify(ctx, vm)
	}
	return v, err
}

func (c *control) resetCBT(r *http.Request) (any, error) {
	return c.withActiveCBT(r, func(d *diskState) { c.store.newEpoch(d) })
}

// loseCBTHistory keeps the disk's CBT epoch but forgets its history: every
// change id issued so far is refused as unknown (cbt.Log.LoseHistory).
func (c *control) loseCBTHistory(r *http.Request) (any, error) {
	return c.withActiveCBT(r, func(d *diskState) { d.published = d.log.LoseHistory().String() })
}

// withActiveCBT runs change on the request's disk, which must have CBT active, under
// the VM's locks, and returns the disk as it is afterwards.
func (c *control) withActiveCBT(r *http.Request, change func(d *diskState)) (any, error) {
	var v diskView
	err := c.lockedVM(r, func(_ *simulator.Context, _ *simulator.VirtualMachine, st *vmState) error {
		d, err := diskKey(r, st)
		if err != nil {
			return err
		}
		if d.log == nil {
			return errorf(http.StatusConflict, "CBT is not active on VM %s", st.ref.Value)
		}
		change(d)
		v, err = c.viewDisk(st, d)
		return err
	})
	return v, err
}

func (c *control) snapshotDisks(r *http.Request) (any, error) {
	ss := c.store.lookupSnap(r.PathValue("moref"))
	if ss == nil {
		return nil, errorf(http.StatusNotFound, "no snapshot %s", r.PathValue("moref"))
	}
	if ss.err != nil {
		return nil, errorf(http.StatusConflict, "snapshot %s has no frozen disks: %v", ss.ref.Value, ss.err)
	}
	out := []frozenView{}
	for _, fd := range ss.disks {
		v := frozenView{Key: fd.key, FileName: fd.fileName, Path: fd.path, Capacity: fd.capacity}
		if fd.changeID != nil {
			id := fd.changeID.String()
			v.ChangeID = &id
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}
