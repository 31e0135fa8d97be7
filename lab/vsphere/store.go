// store.go keeps what vcsim lacks for every VM disk: a real sparse image file,
// the CBT state (epoch log, active or not) and the frozen copies snapshots
// take.
//
// Invariants:
//   - each disk's data lives in STATE_DIR/disks; vcsim's "-flat.vmdk" in the
//     datastore is a symlink to it, so the datastore view and the lab view
//     are the same bytes;
//   - guest writes, freezes and epoch changes of one VM are serialized by
//     vmState.mu, so a frozen copy is a true point in time and a change id
//     recorded with it names exactly the writes in that copy;
//   - lock order is vcsim's object lock of the VM, then vmState.mu, then
//     Store.mu; nothing here calls back into the Registry while holding
//     vmState.mu.
package main

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vmdk"

	"vmguard.io/lab/vsphere/internal/cbt"
	"vmguard.io/lab/vsphere/internal/diskfile"
)

// Store is the lab's disk and CBT state, keyed by moref value.
type Store struct {
	reg     *simulator.Registry
	dataDir string
	snapDir string
	linkDir string // scratch dir on the datastores' filesystem

	mu    sync.Mutex
	vms   map[string]*vmState
	snaps map[string]*snapState

	// While bulk is set (inventory build) new disks are sized by workers
	// instead of inline, because file creation dominates startup.
	bulk    bool
	pending sync.WaitGroup
	work    chan materializeJob

	clones map[string]cloneSource // by "<folder moref>/<escaped name>", under mu
	dsDirs map[string]string      // datastore name -> local directory, under mu

	guest *guestOps // the lab guest (guest.go); nil: every guest login is refused

	// toolsGate, when set, holds the tools goroutines (tools.go) until it is
	// closed: main holds them while it builds the inventory and starts the SDK
	// endpoints, because vcsim's RegisterSDK copies one registry's objects into
	// another without the registry's lock, and a goroutine reading the registry
	// meanwhile crashed the process ("concurrent map read and map write").
	toolsGate chan struct{}
}

type vmState struct {
	mu         sync.Mutex
	ref        types.ManagedObjectReference
	cbtEnabled bool // config.changeTrackingEnabled as last seen
	cbtActive  bool // enabled and activated by a snapshot or power-on
	disks      map[int32]*diskState
	cloneOf    *cloneSource // while the disks of a clone are being created
	faults     vmFaults     // set through the control API (faults.go)
}

type diskState struct {
	key          int32
	label        string
	fileName     string // datastore path of the descriptor, "[ds] vm/disk1.vmdk"
	descriptor   string // local path of the descriptor
	flatPath     string // local path of vcsim's -flat.vmdk (a symlink once materialized)
	dataPath     string // local path of the raw image
	capacity     int64
	uuid         string
	materialized bool
	log          *cbt.Log // nil while CBT is not active
	published    string   // changeId shown in the VM's config
}

type materializeJob struct {
	vm   *vmState
	disk *diskState
}

// NewStore prepares the state directories; stateDir must be empty of old
// disks (the inventory is rebuilt on every start).
func NewStore(reg *simulator.Registry, stateDir, metaDir string) (*Store, error) {
	s := &Store{
		reg:     reg,
		linkDir: filepath.Join(metaDir, ".links"),
		dataDir: filepath.Join(stateDir, "disks"),
		snapDir: filepath.Join(stateDir, "snapshots"),
		vms:     map[string]*vmState{},
		snaps:   map[string]*snapState{},
		clones:  map[string]cloneSource{},
		dsDirs:  map[string]string{},
	}
	for _, d := range []string{s.dataDir, s.snapDir, s.linkDir} {
		if err := os.RemoveAll(d); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// BeginBulk defers disk file creation to workers until EndBulk.
func (s *Store) BeginBulk(workers int) {
	s.bulk = true
	s.work = make(chan materializeJob, 1024)
	for range workers {
		go func() {
			for j := range s.work {
				j.vm.mu.Lock()
				if err := s.materialize(j.vm, j.disk); err != nil {
					log.Printf("disk %s: %v", j.disk.fileName, err)
				}
				j.vm.mu.Unlock()
				s.pending.Done()
			}
		}()
	}
}

// EndBulk waits until every queued disk exists.
func (s *Store) EndBulk() {
	s.bulk = false
	s.pending.Wait() // every queued send has been received, so close is safe
	close(s.work)
}

func (s *Store) vm(ref types.ManagedObjectReference) *vmState {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.vms[ref.Value]
	if st == nil {
		st = &vmState{ref: ref, disks: map[int32]*diskState{}}
		s.vms[ref.Value] = st
	}
	return st
}

func (s *Store) lookupVM(ref string) *vmState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vms[ref]
}

func (s *Store) lookupSnap(ref string) *snapState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snaps[ref]
}

// flatDisk returns the disk and its flat backing, or nil for other devices.
func flatDisk(dev types.BaseVirtualDevice) (*types.VirtualDisk, *types.VirtualDiskFlatVer2BackingInfo) {
	disk, ok := dev.(*types.VirtualDisk)
	if !ok {
		return nil, nil
	}
	b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok {
		return nil, nil
	}
	return disk, b
}

func diskCapacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

// localPaths maps a disk's datastore path to the descriptor and flat file on
// this machine.
func (s *Store) localPaths(b *types.VirtualDiskFlatVer2BackingInfo) (string, string, error) {
	desc, err := s.localPath(b.FileName)
	if err != nil {
		return "", "", err
	}
	return desc, simulator.VirtualDiskBackingFileName(desc), nil
}

// localPath maps "[datastore] path" to a path on this machine.
func (s *Store) localPath(name string) (string, error) {
	var p object.DatastorePath
	if !p.FromString(name) {
		return "", fmt.Errorf("bad datastore path %q", name)
	}
	s.mu.Lock()
	dir, ok := s.dsDirs[p.Datastore]
	s.mu.Unlock()
	if !ok {
		// Registry.All walks every object: once per datastore, not per disk.
		for _, e := range s.reg.All("Datastore") {
			if ds, ok := e.(*simulator.Datastore); ok && ds.Name == p.Datastore {
				dir = ds.Info.GetDatastoreInfo().Url
			}
		}
		if dir == "" {
			return "", fmt.Errorf("datastore %q not found", p.Datastore)
		}
		s.mu.Lock()
		s.dsDirs[p.Datastore] = dir
		s.mu.Unlock()
	}
	return filepath.Join(dir, p.Path), nil
}

// Reconcile brings the lab state of a VM in line with its vcsim config: new,
// removed and resized disks, CBT switched on or off, and activation of
// pending CBT when the VM was just powered on. Called from registry hooks,
// with vcsim's lock of the VM held by the caller.
func (s *Store) Reconcile(vm *mo.VirtualMachine, poweredOn bool) {
	if vm.Config == nil {
		return
	}
	st := s.vm(vm.Self)
	st.mu.Lock()
	defer st.mu.Unlock()
	s.reconcileLocked(st, vm)
	if poweredOn && st.cbtEnabled && !st.cbtActive {
		s.activate(st)
	}
	s.publish(st, vm.Config)
}

func (s *Store) reconcileLocked(st *vmState, vm *mo.VirtualMachine) {
	seen := map[int32]bool{}
	added := false
	if st.cloneOf == nil && vm.Parent != nil {
		st.cloneOf = s.takeClone(*vm.Parent, vm.Name)
	}
	for _, dev := range vm.Config.Hardware.Device {
		disk, b := flatDisk(dev)
		if disk == nil {
			continue
		}
		seen[disk.Key] = true
		capacity := diskCapacity(disk)
		d := st.disks[disk.Key]
		if d == nil || d.fileName != b.FileName {
			desc, flat, err := s.localPaths(b)
			if err != nil {
				log.Printf("%s disk %d: %v", vm.Self.Value, disk.Key, err)
				continue
			}
			d = &diskState{
				key: disk.Key, fileName: b.FileName, descriptor: desc, flatPath: flat,
				capacity: capacity,
			}
			st.disks[disk.Key] = d
			added = true
			if st.cbtActive {
				s.newEpoch(d)
			}
			if st.cloneOf != nil {
				if err := s.materializeClone(st, d); err != nil {
					log.Printf("%s disk %d: clone: %v", vm.Self.Value, disk.Key, err)
				}
			} else if s.bulk {
				// never block on the queue while holding st.mu: workers take it
				s.pending.Add(1)
				go func(j materializeJob) { s.work <- j }(materializeJob{vm: st, disk: d})
			} else if err := s.materialize(st, d); err != nil {
				log.Printf("%s disk %d: %v", vm.Self.Value, disk.Key, err)
			}
		} else if capacity != d.capacity {
			if d.materialized && capacity > d.capacity {
				if err := diskfile.EnsureSize(d.dataPath, capacity); err != nil {
					log.Printf("%s disk %d: resize: %v", vm.Self.Value, disk.Key, err)
				}
			}
			d.capacity = capacity
			if d.log != nil {
				s.newEpoch(d) // a resize breaks the CBT chain, like on ESXi
			}
		}
		d.uuid = b.Uuid
		if info := disk.DeviceInfo; info != nil {
			d.label = info.GetDescription().Label
		}
	}
	if added {
		st.cloneOf = nil // later disks are new disks, not copies
	}
	for key, d := range st.disks {
		if !seen[key] {
			delete(st.disks, key)
			s.collectLater(d)
		}
	}
	enabled := vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled
	if !enabled && st.cbtActive {
		st.cbtActive = false
		for _, d := range st.disks {
			d.log, d.published = nil, ""
		}
	}
	st.cbtEnabled = enabled
}

// activate starts CBT on every disk: a fresh epoch at sequence 0.
func (s *Store) activate(st *vmState) {
	st.cbtActive = true
	for _, d := range st.disks {
		s.newEpoch(d)
	}
}

func (s *Store) newEpoch(d *diskState) {
	d.log = cbt.NewLog(cbt.NewEpoch())
	d.published = d.log.Current().String()
}

// publish copies each disk's published change id into a config.
func (s *Store) publish(st *vmState, cfg *types.VirtualMachineConfigInfo) {
	for _, dev := range cfg.Hardware.Device {
		if disk, b := flatDisk(dev); disk != nil {
			if d := st.disks[disk.Key]; d != nil {
				b.ChangeId = d.published
			}
		}
	}
}

// materialize gives a disk its raw image: a sparse file of the disk's
// capacity in the data dir, with vcsim's flat file replaced by a symlink to
// it. A flat file that already is such a symlink (a disk attached elsewhere
// before) keeps its image; a non-empty regular one is copied in.
func (s *Store) materialize(st *vmState, d *diskState) error {
	if d.materialized {
		return nil
	}
	fi, lerr := os.Lstat(d.flatPath)
	if lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
		target, err := os.Readlink(d.flatPath)
		if err != nil {
			return err
		}
		d.dataPath = target
	} else {
		path, err := s.newDataFile(st.ref, d.key)
		if err != nil {
			return err
		}
		if lerr == nil && fi.Mode().IsRegular() && fi.Size() > 0 {
			if err := diskfile.Copy(d.flatPath, path, d.capacity); err != nil {
				return err
			}
		}
		if err := s.linkFlat(path, d.flatPath); err != nil {
			return err
		}
		d.dataPath = path
	}
	if err := diskfile.EnsureSize(d.dataPath, d.capacity); err != nil {
		return err
	}
	d.materialized = true
	return nil
}

// linkFlat makes flat a symlink to image. The link is made outside the VM
// directory and renamed over flat: vcsim lists VM directories concurrently
// and panics on an entry that vanishes between ReadDir and Stat.
func (s *Store) linkFlat(image, flat string) error {
	link := filepath.Join(s.linkDir, filepath.Base(image))
	_ = os.Remove(link)
	if err := os.Symlink(image, link); err != nil {
		return err
	}
	return os.Rename(link, flat)
}

func (s *Store) newDataFile(vm types.ManagedObjectReference, key int32) (string, error) {
	for i := 0; ; i++ {
		name := fmt.Sprintf("%s-%d.img", vm.Value, key)
		if i > 0 {
			name = fmt.Sprintf("%s-%d.%d.img", vm.Value, key, i)
		}
		path := filepath.Join(s.dataDir, name)
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		return path, f.Close()
	}
}

// ActivateAll activates CBT on every VM whose config has it enabled, as if the
// inventory had been running for a while before the lab started.
func (s *Store) ActivateAll() {
	for _, e := range s.reg.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		st := s.vm(vm.Self)
		st.mu.Lock()
		if st.cbtEnabled && !st.cbtActive {
			s.activate(st)
			s.publish(st, vm.Config)
		}
		st.mu.Unlock()
	}
}

// updateDescriptor keeps vcsim's .vmdk descriptor in line with a new capacity.
func updateDescriptor(path string, capacity int64) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	desc, err := vmdk.ParseDescriptor(f)
	f.Close()
	if err != nil {
		return err
	}
	if len(desc.Extent) == 0 {
		return nil
	}
	desc.Extent[0].Size = (capacity + vmdk.SectorSize - 1) / vmdk.SectorSize
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := desc.Write(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
