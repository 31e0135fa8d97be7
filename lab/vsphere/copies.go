// copies.go makes and frees the point-in-time copies: the frozen disks of a
// snapshot, the disks of a clone, and the images of disks vcsim deleted.
//
// Invariant: a copy is taken with the source VM's vmState.mu held, so no
// guest write lands in the middle of it, and the change id recorded with a
// frozen disk is the sequence number of the last write the copy contains.
package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"

	"vmguard.io/lab/vsphere/internal/cbt"
	"vmguard.io/lab/vsphere/internal/diskfile"
)

// cloneSource is a CloneVM_Task in flight: the new VM's disks start as
// copies of the source's (live, or frozen in the given snapshot).
type cloneSource struct {
	vm       types.ManagedObjectReference
	snapshot *types.ManagedObjectReference
	since    time.Time
}

type snapState struct {
	ref   types.ManagedObjectReference
	vm    types.ManagedObjectReference
	disks map[int32]*frozenDisk
	err   error    // the freeze failed; queries fault
	files []string // vcsim's .vmsn/.vmem of the snapshot, deleted with it
}

type frozenDisk struct {
	key        int32
	fileName   string // datastore path of the frozen disk's descriptor
	descriptor string // its local path
	flatLink   string // local path of its -flat.vmdk, a symlink to path
	path       string // the frozen raw image
	capacity   int64
	changeID   *cbt.ChangeID // nil when CBT was not active at snapshot time
	log        *cbt.Log
}

// expectClone notes a CloneVM_Task before vcsim runs it.
func (s *Store) expectClone(req *types.CloneVM_Task) {
	src := cloneSource{vm: req.This, snapshot: req.Spec.Snapshot, since: time.Now()}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range s.clones {
		if time.Since(c.since) > 5*time.Minute {
			delete(s.clones, k) // a clone that failed before creating its VM
		}
	}
	s.clones[req.Folder.Value+"/"+escapeName(req.Name)] = src
}

func (s *Store) takeClone(folder types.ManagedObjectReference, name string) *cloneSource {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := folder.Value + "/" + name
	c, ok := s.clones[k]
	if !ok {
		return nil
	}
	delete(s.clones, k)
	return &c
}

// materializeClone creates a clone's disk as a copy of the source disk with
// the same key, taken under the source's lock so it is a point in time.
func (s *Store) materializeClone(st *vmState, d *diskState) error {
	src := st.cloneOf
	var from string
	if src.snapshot != nil {
		if ss := s.lookupSnap(src.snapshot.Value); ss != nil && ss.disks[d.key] != nil {
			from = ss.disks[d.key].path
		}
	}
	var unlock func()
	if from == "" {
		srcState := s.lookupVM(src.vm.Value)
		if srcState == nil || srcState == st {
			return s.materialize(st, d)
		}
		srcState.mu.Lock()
		unlock = srcState.mu.Unlock
		if sd := srcState.disks[d.key]; sd != nil {
			if err := s.materialize(srcState, sd); err == nil {
				from = sd.dataPath
			}
		}
	}
	if err := s.materialize(st, d); err != nil || from == "" {
		if unlock != nil {
			unlock()
		}
		return err
	}
	err := diskfile.Copy(from, d.dataPath, d.capacity)
	if unlock != nil {
		unlock()
	}
	return err
}

// collectLater removes a detached disk's image once vcsim has deleted the
// flat file pointing at it (vcsim deletes VM files in a task of its own).
// A disk detached with its files kept keeps its image.
func (s *Store) collectLater(d *diskState) {
	if !d.materialized {
		return
	}
	time.AfterFunc(5*time.Second, func() {
		if target, err := os.Readlink(d.flatPath); err == nil && target == d.dataPath {
			return
		}
		if err := os.Remove(d.dataPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Printf("collect %s: %v", d.dataPath, err)
		}
	})
}

// Freeze runs when vcsim registers a new snapshot (inside its create task,
// with the VM locked): it activates pending CBT, copies every disk, and records
// the change ids in the snapshot's and the VM's config.
func (s *Store) Freeze(snap *simulator.VirtualMachineSnapshot) {
	vm, ok := s.reg.Get(snap.Vm).(*simulator.VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	st := s.vm(vm.Self)
	st.mu.Lock()
	defer st.mu.Unlock()
	s.reconcileLocked(st, &vm.VirtualMachine)
	if st.cbtEnabled && !st.cbtActive {
		s.activate(st)
	}
	ss := &snapState{ref: snap.Self, vm: vm.Self, disks: map[int32]*frozenDisk{}}
	for _, d := range st.disks {
		fd := &frozenDisk{
			key: d.key, fileName: d.fileName, capacity: d.capacity, log: d.log,
			path: filepath.Join(s.snapDir, fmt.Sprintf("%s-%d.img", snap.Self.Value, d.key)),
		}
		if err := s.materialize(st, d); err != nil {
			ss.err = err
		} else if err := diskfile.Copy(d.dataPath, fd.path, d.capacity); err != nil {
			ss.err = err
		} else if err := s.showFrozen(d, fd, snap.Self.Value); err != nil {
			ss.err = err
		}
		if ss.err != nil {
			log.Printf("snapshot %s of %s: %v", snap.Self.Value, vm.Self.Value, ss.err)
			break
		}
		if d.log != nil {
			id := d.log.Current()
			fd.changeID = &id
			d.published = id.String()
		}
		ss.disks[d.key] = fd
	}
	s.mu.Lock()
	s.snaps[snap.Self.Value] = ss
	s.mu.Unlock()
	for _, dev := range snap.Config.Hardware.Device {
		if disk, b := flatDisk(dev); disk != nil {
			b.ChangeId = ""
			if fd := ss.disks[disk.Key]; fd != nil {
				b.FileName = fd.fileName
				if fd.changeID != nil {
					b.ChangeId = fd.changeID.String()
				}
			}
		}
	}
	s.publish(st, vm.Config)
}

// showFrozen puts a frozen copy on the datastore next to the live disk, as
// "<disk>-<snapshot>.vmdk" with its flat file a symlink to the copy, and the
// snapshot's config names it. On ESXi the snapshot keeps the base disk and
// the VM moves on to a delta; either way the snapshot's backing fileName is
// the frozen disk, which is what hot-add attaches and VDDK opens.
func (s *Store) showFrozen(d *diskState, fd *frozenDisk, snapshot string) error {
	var p object.DatastorePath
	if !p.FromString(d.fileName) {
		return fmt.Errorf("bad datastore path %q", d.fileName)
	}
	base := strings.TrimSuffix(path.Base(p.Path), ".vmdk") + "-" + snapshot + ".vmdk"
	p.Path = path.Join(path.Dir(p.Path), base)
	fd.fileName = p.String()
	fd.descriptor = filepath.Join(filepath.Dir(d.descriptor), base)
	fd.flatLink = simulator.VirtualDiskBackingFileName(fd.descriptor)
	desc := vmdk.NewDescriptor(vmdk.Extent{
		Info: filepath.Base(fd.flatLink),
		Size: (fd.capacity + vmdk.SectorSize - 1) / vmdk.SectorSize,
	})
	f, err := os.Create(fd.descriptor)
	if err != nil {
		return err
	}
	if err := desc.Write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return s.linkFlat(fd.path, fd.flatLink)
}

// adoptSnapshotFiles takes the deletion of snapshot files away from vcsim.
// vcsim remembers a snapshot's .vmsn by its key in layoutEx.file, but
// RefreshStorageInfo renumbers those keys, so removing a snapshot later can
// delete whatever file has the old key now, such as the live disk's
// descriptor. Right after vcsim adds a snapshot's layout the key is still
// right: the file is recorded here and the keys are cleared.
func (s *Store) adoptSnapshotFiles(vm *mo.VirtualMachine) {
	if vm.LayoutEx == nil {
		return
	}
	names := map[int32]string{}
	for _, f := range vm.LayoutEx.File {
		names[f.Key] = f.Name
	}
	for i := range vm.LayoutEx.Snapshot {
		sl := &vm.LayoutEx.Snapshot[i]
		var files []string
		for _, key := range []*int32{&sl.DataKey, &sl.MemoryKey} {
			if *key < 0 {
				continue
			}
			if local, err := s.localPath(names[*key]); err == nil {
				files = append(files, local)
			}
			*key = -1
		}
		if len(files) == 0 {
			continue
		}
		s.mu.Lock()
		if ss := s.snaps[sl.Key.Value]; ss != nil {
			ss.files = append(ss.files, files...)
		}
		s.mu.Unlock()
	}
}

// DropSnapshot deletes a snapshot's frozen copies.
func (s *Store) DropSnapshot(ref string) {
	s.mu.Lock()
	ss := s.snaps[ref]
	delete(s.snaps, ref)
	s.mu.Unlock()
	if ss == nil {
		return
	}
	for _, f := range ss.files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			log.Printf("snapshot %s: %v", ref, err)
		}
	}
	for _, fd := range ss.disks {
		for _, p := range []string{fd.descriptor, fd.flatLink, fd.path} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				log.Printf("snapshot %s: %v", ref, err)
			}
		}
	}
	// a failed freeze may have left a partial copy without a disk entry
	matches, _ := filepath.Glob(filepath.Join(s.snapDir, ref+"-*.img"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

// DropVM forgets a destroyed VM and the frozen copies of its snapshots.
func (s *Store) DropVM(ref string) {
	if st := s.lookupVM(ref); st != nil {
		st.mu.Lock()
		for _, d := range st.disks {
			s.collectLater(d)
		}
		st.mu.Unlock()
	}
	s.mu.Lock()
	delete(s.vms, ref)
	var snaps []string
	for k, ss := range s.snaps {
		if ss.vm.Value == ref {
			snaps = append(snaps, k)
		}
	}
	s.mu.Unlock()
	for _, k := range snaps {
		s.DropSnapshot(k)
	}
}
