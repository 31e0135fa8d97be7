// inventory.go builds the lab's VM inventory inside vcsim. Everything is
// drawn from one PCG stream seeded by -seed in a fixed order, and VMs are
// created one at a time, so names, placement, attributes and even morefs are
// the same on every start with the same flags. README.md documents the
// scheme.
package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vapi/rest"
	"github.com/vmware/govmomi/vapi/tags"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const datastoreName = "LocalDS_0"

// vmFolders are created under the datacenter's vm folder; the ones with a
// prefix receive the bulk of the VMs, in this order of choice.
var vmFolders = []struct{ path, prefix string }{
	{"Production", ""},
	{"Production/Web", "web"},
	{"Production/Databases", "db"},
	{"Development", ""},
	{"Development/Team-A", "dev-a"},
	{"Development/Team-B", ""},
	{"Development/Team-B/Sandbox", "sandbox"},
	{"Test", "test"},
	{"Infrastructure", "infra"},
	{"Templates", ""},
}

var (
	hardwareVersions = []int{7, 8, 9, 10, 11, 13, 14, 15, 17, 18, 19, 20, 21}
	guestIDs         = []string{"ubuntu64Guest", "rhel8_64Guest", "windows2019srv_64Guest", "otherLinux64Guest"}
	owners           = []string{"alice", "bob", "carol", "dave", "platform-team"}
	backupValues     = []string{"daily", "weekly", "none"}
)

// Special VMs at fixed indexes, so tests can find them by name.
const (
	templateIndex = 0 // tmpl-linux-0000, a template in Templates
	unicodeIndex  = 1 // a name with non-ASCII letters
	slashIndex    = 2 // "web/frontend-0002", shown by vSphere as "web%2ffrontend-0002"
)

// tagCategories are created through the vAPI REST endpoint.
var tagCategories = []struct {
	name string
	tags []string
}{
	{"backup-tier", []string{"gold", "silver"}},
	{"environment", []string{"production", "development", "test"}},
}

type inventoryConfig struct {
	vms          int
	seed         uint64
	diskCapacity int64
}

// vmPlan is everything drawn for one VM.
type vmPlan struct {
	name      string
	folder    string
	hw        int
	guest     string
	cpus      int32
	memoryMB  int64
	cbt       bool
	poweredOn bool
	template  bool
	disks     []int64
	owner     string // "" = attribute not set
	backup    string
	tier      string // backup-tier tag, "" = none
	env       string // environment tag, "" = none
}

func planVM(i int, cfg inventoryConfig, rng *rand.Rand) vmPlan {
	var bulk []int
	for k, f := range vmFolders {
		if f.prefix != "" {
			bulk = append(bulk, k)
		}
	}
	// Draw every value for every VM, special or not, so that adding a special
	// case never shifts the stream for the VMs after it.
	folder := vmFolders[bulk[rng.IntN(len(bulk))]]
	p := vmPlan{
		folder:    folder.path,
		name:      fmt.Sprintf("%s-%04d", folder.prefix, i),
		hw:        hardwareVersions[rng.IntN(len(hardwareVersions))],
		guest:     guestIDs[rng.IntN(len(guestIDs))],
		cpus:      int32(1 << rng.IntN(3)),
		memoryMB:  int64(512 << rng.IntN(4)),
		cbt:       rng.Float64() < 0.6,
		poweredOn: rng.Float64() < 0.8,
		disks:     []int64{cfg.diskCapacity},
	}
	if rng.Float64() < 0.15 {
		p.disks = append(p.disks, max(cfg.diskCapacity/2/(1<<20)*(1<<20), 1<<20))
	}
	if x := rng.Float64(); x < 0.7 {
		p.owner = owners[rng.IntN(len(owners))]
	} else {
		rng.IntN(len(owners))
	}
	if x := rng.Float64(); x < 0.5 {
		p.backup = backupValues[rng.IntN(len(backupValues))]
	} else {
		rng.IntN(len(backupValues))
	}
	switch x := rng.Float64(); {
	case x < 0.2:
		p.tier = "gold"
	case x < 0.5:
		p.tier = "silver"
	}
	switch {
	case strings.HasPrefix(p.folder, "Production"):
		p.env = "production"
	case strings.HasPrefix(p.folder, "Development"):
		p.env = "development"
	case p.folder == "Test":
		p.env = "test"
	}
	switch i {
	case templateIndex:
		p.name, p.folder, p.template, p.poweredOn, p.cbt = "tmpl-linux-0000", "Templates", true, false, false
		p.env, p.tier = "", ""
	case unicodeIndex:
		p.name, p.folder, p.cbt, p.env = "ünïcødé-数据库-0001", "Production/Databases", true, "production"
	case slashIndex:
		p.name, p.folder, p.cbt, p.env = "web/frontend-0002", "Production/Web", true, "production"
	}
	return p
}

// newRand is the inventory's one random stream.
func newRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0x766d6775617264))
}

// escapeName is what vCenter (and vcsim) does to '%', '/' and '\' in names.
func escapeName(name string) string {
	r := strings.NewReplacer("%", "%25", "/", "%2f", `\`, "%5c")
	return r.Replace(name)
}

// placement is a resource pool and host a VM can be created on.
type placement struct {
	pool *object.ResourcePool
	host *object.HostSystem
}

// inventory holds what buildInventory made and what is left for the REST
// endpoint once the server runs.
type inventory struct {
	tagged map[[2]string][]mo.Reference // {category, tag} -> VMs
}

func buildInventory(ctx context.Context, m *simulator.Model, cfg inventoryConfig) (*inventory, error) {
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return nil, err
	}
	reg := m.Map()
	finder := find.NewFinder(c)
	dc, err := finder.Datacenter(ctx, "DC0")
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	dcFolders, err := dc.Folders(ctx)
	if err != nil {
		return nil, err
	}
	folders := map[string]*object.Folder{}
	for _, f := range vmFolders {
		parent := dcFolders.VmFolder
		if dir := path.Dir(f.path); dir != "." {
			parent = folders[dir]
		}
		if folders[f.path], err = parent.CreateFolder(ctx, path.Base(f.path)); err != nil {
			return nil, fmt.Errorf("folder %s: %w", f.path, err)
		}
	}

	hosts, err := finder.HostSystemList(ctx, "*")
	if err != nil {
		return nil, err
	}
	sort.Slice(hosts, func(i, j int) bool { return hosts[i].InventoryPath < hosts[j].InventoryPath })
	var places []placement
	for _, h := range hosts {
		pool, err := h.ResourcePool(ctx)
		if err != nil {
			return nil, err
		}
		places = append(places, placement{pool: pool, host: h})
	}

	cfm, err := object.GetCustomFieldsManager(c)
	if err != nil {
		return nil, err
	}
	fields := map[string]int32{}
	for _, name := range []string{"owner", "backup"} {
		def, err := cfm.Add(ctx, name, "VirtualMachine", nil, nil)
		if err != nil {
			return nil, err
		}
		fields[name] = def.Key
	}

	inv := &inventory{tagged: map[[2]string][]mo.Reference{}}
	rng := newRand(cfg.seed)
	for i := range cfg.vms {
		p := planVM(i, cfg, rng)
		place := places[rng.IntN(len(places))]
		ref, err := createVM(ctx, c, reg, folders[p.folder], place, p)
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", p.name, err)
		}
		vm := object.NewVirtualMachine(c, ref)
		if p.poweredOn {
			powerOn(ctx, reg, ref)
		}
		if p.template {
			if err := vm.MarkAsTemplate(ctx); err != nil {
				return nil, err
			}
		}
		for _, kv := range [][2]string{{"owner", p.owner}, {"backup", p.backup}} {
			if kv[1] != "" {
				if err := cfm.Set(ctx, ref, fields[kv[0]], kv[1]); err != nil {
					return nil, err
				}
			}
		}
		if p.tier != "" {
			k := [2]string{"backup-tier", p.tier}
			inv.tagged[k] = append(inv.tagged[k], vm)
		}
		if p.env != "" {
			k := [2]string{"environment", p.env}
			inv.tagged[k] = append(inv.tagged[k], vm)
		}
	}
	return inv, nil
}

func createVM(ctx context.Context, c *vim25.Client, reg *simulator.Registry, folder *object.Folder,
	place placement, p vmPlan) (types.ManagedObjectReference, error) {
	// vcsim 0.56 duplicates the device list of a CreateVM whose name needs
	// escaping ('/', '%', '\'), so such VMs are created under a plain name and
	// renamed to the escaped form afterwards, as vCenter would show them.
	dir := strings.NewReplacer("/", "-", "%", "-", `\`, "-").Replace(p.name)
	spec := types.VirtualMachineConfigSpec{
		Name:                  dir,
		GuestId:               p.guest,
		Version:               fmt.Sprintf("vmx-%02d", p.hw),
		NumCPUs:               p.cpus,
		MemoryMB:              p.memoryMB,
		ChangeTrackingEnabled: types.NewBool(p.cbt),
		Files:                 &types.VirtualMachineFileInfo{VmPathName: "[" + datastoreName + "]"},
	}
	var devices object.VirtualDeviceList
	ctrl, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	devices = append(devices, ctrl)
	for n, capacity := range p.disks {
		file := fmt.Sprintf("[%s] %s/disk%d.vmdk", datastoreName, dir, n+1)
		disk := devices.CreateDisk(ctrl.(types.BaseVirtualController), types.ManagedObjectReference{}, file)
		disk.CapacityInBytes = capacity
		disk.CapacityInKB = capacity / 1024
		disk.DeviceInfo = &types.Description{Label: fmt.Sprintf("Hard disk %d", n+1)}
		devices = append(devices, disk)
	}
	nic, err := devices.CreateEthernetCard("vmxnet3", &types.VirtualEthernetCardNetworkBackingInfo{
		VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: "VM Network"},
	})
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	devices = append(devices, nic)
	if spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd); err != nil {
		return types.ManagedObjectReference{}, err
	}
	task, err := folder.CreateVM(ctx, spec, place.pool, place.host)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	res, err := waitTask(reg, task.Reference())
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	ref := res.(types.ManagedObjectReference)
	if name := escapeName(p.name); name != dir {
		vm := reg.Get(ref).(*simulator.VirtualMachine)
		ctx := &simulator.Context{Context: ctx, Map: reg}
		ctx.WithLock(vm, func() {
			ctx.Update(vm, []types.PropertyChange{
				{Name: "name", Val: name},
				{Name: "config.name", Val: name},
				{Name: "summary.config.name", Val: name},
			})
		})
	}
	return ref, nil
}

// powerOn sets a new VM's power state directly. A PowerOn task deep-copies
// the device list through XML and posts events: at 5,000 VMs that is seconds
// of startup for nothing a test looks at.
func powerOn(ctx context.Context, reg *simulator.Registry, ref types.ManagedObjectReference) {
	vm := reg.Get(ref).(*simulator.VirtualMachine)
	sctx := &simulator.Context{Context: ctx, Map: reg}
	sctx.WithLock(vm, func() {
		for _, d := range vm.Config.Hardware.Device {
			if c := d.GetVirtualDevice().Connectable; c != nil {
				c.Connected = c.StartConnected
			}
		}
		var boot types.AnyType = time.Now()
		sctx.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
			{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
			{Name: "summary.runtime.bootTime", Val: boot},
		})
	})
}

// waitTask polls vcsim's task object directly. object.Task.Wait goes through
// the PropertyCollector, which batches updates every 20 ms: 5,000 VMs would
// spend minutes there.
func waitTask(reg *simulator.Registry, ref types.ManagedObjectReference) (types.AnyType, error) {
	task, ok := reg.Get(ref).(*simulator.Task)
	if !ok {
		return nil, fmt.Errorf("task %s not found", ref.Value)
	}
	lock := &simulator.Context{} // a context of our own: never shares a lock
	delay := 20 * time.Microsecond
	for {
		var info types.TaskInfo
		reg.WithLock(lock, task, func() { info = task.Info })
		switch info.State {
		case types.TaskInfoStateSuccess:
			return info.Result, nil
		case types.TaskInfoStateError:
			if info.Error != nil {
				return nil, fmt.Errorf("%s: %T", info.Name, info.Error.Fault)
			}
			return nil, fmt.Errorf("%s failed", info.Name)
		}
		time.Sleep(delay)
		delay = min(delay*2, 2*time.Millisecond)
	}
}

// applyTags creates the tag categories and tags through the vAPI REST
// endpoint of the running server and attaches them, one call per tag.
func applyTags(ctx context.Context, sdk *serverURLs, inv *inventory) error {
	c, err := govmomi.NewClient(ctx, sdk.withUser(), true)
	if err != nil {
		return err
	}
	defer c.Logout(ctx)
	rc := rest.NewClient(c.Client)
	if err := rc.Login(ctx, sdk.user); err != nil {
		return err
	}
	defer rc.Logout(ctx)
	m := tags.NewManager(rc)
	for _, cat := range tagCategories {
		catID, err := m.CreateCategory(ctx, &tags.Category{
			Name:            cat.name,
			Description:     "vmguard lab",
			Cardinality:     "SINGLE",
			AssociableTypes: []string{"VirtualMachine"},
		})
		if err != nil {
			return fmt.Errorf("category %s: %w", cat.name, err)
		}
		for _, name := range cat.tags {
			tagID, err := m.CreateTag(ctx, &tags.Tag{Name: name, CategoryID: catID})
			if err != nil {
				return fmt.Errorf("tag %s: %w", name, err)
			}
			if refs := inv.tagged[[2]string{cat.name, name}]; len(refs) > 0 {
				if err := m.AttachTagToMultipleObjects(ctx, tagID, refs); err != nil {
					return fmt.Errorf("attach %s: %w", name, err)
				}
			}
		}
	}
	return nil
}
