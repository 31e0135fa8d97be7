// Command vmguard-vcsim is the lab's vSphere: VMware's simulator (govmomi's
// vcsim engine) with what vmguard's tests need and vcsim lacks: VM disks
// backed by real sparse images, snapshots that freeze a point-in-time copy,
// QueryChangedDiskAreas answered from the writes actually made, a seeded
// inventory of up to thousands of VMs, and a control endpoint for tests.
//
// It writes STATE_DIR/ready.json once both listeners serve and removes it on
// exit, and records the distinct calls it serves in STATE_DIR/calls.jsonl;
// see README.md for the flags, the call log and the control API.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

type options struct {
	dir          string
	sdkAddr      string
	controlAddr  string
	vms          int
	seed         uint64
	diskCapacity int64
	tlsCert      string
	tlsKey       string
	metaDir      string
	cpuProfile   string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.dir, "dir", "", "state directory (required); disks, snapshots and ready.json live here")
	flag.StringVar(&o.sdkAddr, "sdk-addr", "127.0.0.1:8989", "loopback address of the HTTPS SDK and REST server")
	flag.StringVar(&o.controlAddr, "control-addr", "127.0.0.1:8990", "loopback address of the plain HTTP control API")
	flag.IntVar(&o.vms, "vms", 50, "number of VMs in the inventory (up to 5000 start within seconds)")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the inventory")
	flag.Int64Var(&o.diskCapacity, "disk-capacity", 10<<30, "capacity in bytes of each VM's first disk (multiple of 1 MiB)")
	flag.StringVar(&o.tlsCert, "tls-cert", "", "PEM certificate of the SDK server (default: self-signed, written to DIR/tls)")
	flag.StringVar(&o.tlsKey, "tls-key", "", "PEM key matching -tls-cert")
	flag.StringVar(&o.metaDir, "meta-dir", "auto",
		`where vcsim keeps its datastore tree (.vmx, logs, descriptors): "auto" = tmpfs (/dev/shm) when available, else DIR/vcsim`)
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the startup to this file")
	flag.Parse()
	return o
}

func main() {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vmguard-vcsim: ")
	if err := run(parseFlags()); err != nil {
		log.Fatal(err)
	}
}

func run(o options) error {
	start := time.Now()
	if o.dir == "" {
		return errors.New("-dir is required")
	}
	if o.vms < 0 || o.diskCapacity < 1<<20 || o.diskCapacity%(1<<20) != 0 {
		return errors.New("-vms must be >= 0 and -disk-capacity a multiple of 1 MiB")
	}
	username, password := os.Getenv("VMGUARD_VCSIM_USERNAME"), os.Getenv("VMGUARD_VCSIM_PASSWORD")
	if username == "" || password == "" {
		return errors.New("VMGUARD_VCSIM_USERNAME and VMGUARD_VCSIM_PASSWORD must be set")
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	readyPath := filepath.Join(dir, "ready.json")
	_ = os.Remove(readyPath)
	sdkAddr, err := loopbackAddr(o.sdkAddr)
	if err != nil {
		return fmt.Errorf("-sdk-addr: %w", err)
	}
	controlAddr, err := loopbackAddr(o.controlAddr)
	if err != nil {
		return fmt.Errorf("-control-addr: %w", err)
	}
	controlListener, err := net.Listen("tcp", controlAddr)
	if err != nil {
		return err
	}
	cert, certPath, err := loadCertificate(o.tlsCert, o.tlsKey, filepath.Join(dir, "tls"))
	if err != nil {
		return err
	}

	meta, err := prepareMetaDir(o.metaDir, dir)
	if err != nil {
		return err
	}
	defer func() {
		_ = os.RemoveAll(meta)
		_ = os.Remove(filepath.Join(dir, "vcsim-meta"))
	}()
	// vcsim makes its datastore directories with os.MkdirTemp.
	if err := os.Setenv("TMPDIR", meta); err != nil {
		return err
	}

	model := simulator.VPX()
	model.Autostart = false
	model.Machine = 0
	model.Cluster = 2
	model.ClusterHost = 2
	model.Host = 1
	model.Datastore = 1
	if err := model.Create(); err != nil {
		return err
	}
	defer model.Remove()

	store, err := NewStore(model.Map(), dir, meta)
	if err != nil {
		return err
	}
	// The lab guest's account (guest.go); without a password every guest
	// login is refused.
	store.guest, err = newGuestOps(dir, guestUser(), os.Getenv("VMGUARD_VCSIM_GUEST_PASSWORD"))
	if err != nil {
		return err
	}
	model.Map().AddHandler(&labHooks{store: store})
	model.Map().Handler = store.methodHandler

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	store.toolsGate = make(chan struct{}) // opened once the SDK serves (store.go)
	store.BeginBulk(4)
	// The build allocates a lot of short-lived XML; collecting less often
	// saves about a second at 5,000 VMs.
	gc := debug.SetGCPercent(400)
	inv, err := buildInventory(ctx, model, inventoryConfig{vms: o.vms, seed: o.seed, diskCapacity: o.diskCapacity})
	debug.SetGCPercent(gc)
	store.EndBulk()
	if err != nil {
		return fmt.Errorf("inventory: %w", err)
	}
	store.ActivateAll()
	log.Printf("inventory of %d VMs built in %s", o.vms, time.Since(start).Round(time.Millisecond))

	calls, err := newCallLog(filepath.Join(dir, "calls.jsonl"))
	if err != nil {
		return err
	}
	defer calls.Close()
	sdk, err := startSDK(model, sdkAddr, url.UserPassword(username, password), cert, calls)
	if err != nil {
		return err
	}
	if err := applyTags(ctx, &sdk.urls, inv); err != nil {
		return fmt.Errorf("tags: %w", err)
	}
	store.guest.files = &guestFiles{baseURL: "http://" + controlListener.Addr().String(), pending: map[string]guestTransfer{}}
	ctl := &http.Server{Handler: (&control{store: store}).routes(), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		if err := ctl.Serve(controlListener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Print("control server: ", err)
		}
	}()

	close(store.toolsGate)

	ready := map[string]any{
		"sdk_url":     sdk.urls.sdk.String(),
		"rest_url":    sdk.urls.rest.String(),
		"control_url": "http://" + controlListener.Addr().String(),
		"tls_cert":    certPath,
		"pid":         os.Getpid(),
	}
	if err := writeJSONAtomic(readyPath, ready); err != nil {
		return err
	}
	defer os.Remove(readyPath)
	pprof.StopCPUProfile()
	log.Printf("ready in %s: sdk %s, control %s", time.Since(start).Round(time.Millisecond),
		sdk.urls.sdk, ready["control_url"])

	<-ctx.Done()
	log.Print("shutting down")
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = os.Remove(readyPath)
	_ = ctl.Shutdown(shutdown)
	_ = sdk.http.Shutdown(shutdown)
	return nil
}

// guestUser is the lab guest's user name (VMGUARD_VCSIM_GUEST_USERNAME).
func guestUser() string {
	if u := os.Getenv("VMGUARD_VCSIM_GUEST_USERNAME"); u != "" {
		return u
	}
	return "vmguard-guest"
}

// prepareMetaDir picks and empties the directory for vcsim's datastore tree.
// vcsim creates five small files per VM; on the lab's disk that alone takes
// 15-20 s for 5,000 VMs, on tmpfs well under a second. Disk images never go
// there: they live in DIR/disks and vcsim's flat files point at them.
func prepareMetaDir(choice, stateDir string) (string, error) {
	link := filepath.Join(stateDir, "vcsim-meta")
	meta := filepath.Join(stateDir, "vcsim")
	if choice == "auto" {
		var fs syscall.Statfs_t
		const tmpfsMagic = 0x01021994
		if err := syscall.Statfs("/dev/shm", &fs); err == nil && fs.Type == tmpfsMagic &&
			syscall.Access("/dev/shm", 2 /* W_OK */) == nil {
			sum := sha256.Sum256([]byte(stateDir))
			meta = filepath.Join("/dev/shm", "vmguard-vcsim-"+hex.EncodeToString(sum[:6]))
		}
	} else if choice != "" {
		meta = choice
	}
	if err := os.RemoveAll(meta); err != nil {
		return "", err
	}
	if err := os.MkdirAll(meta, 0o700); err != nil {
		return "", err
	}
	_ = os.Remove(link)
	if meta != filepath.Join(stateDir, "vcsim") {
		if err := os.Symlink(meta, link); err != nil {
			return "", err
		}
	}
	return meta, nil
}

func writeJSONAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
