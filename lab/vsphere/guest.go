// guest.go gives the lab's VMs a "guest" that runs programs: govmomi's own
// GuestProcessManager runs them through docker, which the lab has not (and
// panics without). methodHandler hands StartProgramInGuest,
// ListProcessesInGuest and TerminateProcessInGuest to guestPM, a per-call
// wrapper like cbtVM (hooks.go), which runs the program as a local process
// (exec, no shell) in DIR/guest/<moref> with VMGUARD_LAB_VM=<moref> in its
// environment. Callers authenticate as the lab's guest account
// (NamePasswordAuthentication); the password is never logged or reported.
// Every call is recorded and shown by the control API at
// GET /vms/{moref}/guest/processes. Lab only: nothing like it exists in ESXi.
package main

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// guestOps holds the lab guest's account and every program started.
type guestOps struct {
	dir      string // DIR/guest; one subdirectory per VM
	user     string
	password string

	mu    sync.Mutex
	procs []*guestProc // in call order

	files *guestFiles // file transfers (guestfiles.go); nil until the control server listens
}

// guestProc is one StartProgramInGuest call; a refused call has Pid 0 and
// Fault set. Fields after start are guarded by guestOps.mu.
type guestProc struct {
	VM         string     `json:"vm"`
	Pid        int64      `json:"pid"`
	Program    string     `json:"program"`
	Args       []string   `json:"args"`
	User       string     `json:"user"`
	StartTime  time.Time  `json:"startTime"`
	EndTime    *time.Time `json:"endTime"`
	ExitCode   *int32     `json:"exitCode"`
	Terminated bool       `json:"terminated"`
	Fault      string     `json:"fault,omitempty"`

	cmd *exec.Cmd
}

func newGuestOps(stateDir, user, password string) (*guestOps, error) {
	dir := filepath.Join(stateDir, "guest")
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &guestOps{dir: dir, user: user, password: password}, nil
}

// vmDir is the VM's guest directory, created on first use.
func (g *guestOps) vmDir(moref string) (string, error) {
	d := filepath.Join(g.dir, filepath.Base(moref))
	return d, os.MkdirAll(d, 0o755)
}

// login checks the guest credentials; ESXi answers InvalidGuestLogin.
func (g *guestOps) login(auth types.BaseGuestAuthentication) types.BaseMethodFault {
	np, ok := auth.(*types.NamePasswordAuthentication)
	if !ok || g.password == "" {
		return new(types.InvalidGuestLogin)
	}
	userOK := subtle.ConstantTimeCompare([]byte(np.Username), []byte(g.user)) == 1
	passOK := subtle.ConstantTimeCompare([]byte(np.Password), []byte(g.password)) == 1
	if !userOK || !passOK {
		return new(types.InvalidGuestLogin)
	}
	return nil
}

// checkVM refuses a VM that is gone or not powered on, like ESXi.
func checkVM(ctx *simulator.Context, ref types.ManagedObjectReference) (string, types.BaseMethodFault) {
	vm, ok := ctx.Map.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return "", &types.ManagedObjectNotFound{Obj: ref}
	}
	var state types.VirtualMachinePowerState
	ctx.WithLock(vm, func() { state = vm.Runtime.PowerState })
	if state != types.VirtualMachinePowerStatePoweredOn {
		return "", &types.InvalidPowerState{RequestedState: types.VirtualMachinePowerStatePoweredOn, ExistingState: state}
	}
	return ref.Value, nil
}

func (g *guestOps) start(ctx *simulator.Context, req *types.StartProgramInGuest) (int64, string, types.BaseMethodFault) {
	spec, _ := req.Spec.(*types.GuestProgramSpec)
	rec := &guestProc{VM: req.Vm.Value, StartTime: time.Now(), Args: []string{}}
	if np, ok := req.Auth.(*types.NamePasswordAuthentication); ok {
		rec.User = np.Username
	}
	refuse := func(msg string, f types.BaseMethodFault) (int64, string, types.BaseMethodFault) {
		rec.Fault = fmt.Sprintf("%T", f)[len("*types."):]
		g.mu.Lock()
		g.procs = append(g.procs, rec)
		g.mu.Unlock()
		return 0, msg, f
	}
	if spec != nil {
		rec.Program = spec.ProgramPath
	}
	if f := g.login(req.Auth); f != nil {
		return refuse("Failed to authenticate with the guest operating system using the supplied credentials.", f)
	}
	moref, f := checkVM(ctx, req.Vm)
	if f != nil {
		return refuse("The operation is not allowed in the current power state.", f)
	}
	if spec == nil || !filepath.IsAbs(spec.ProgramPath) {
		return refuse("programPath must be an absolute path", &types.InvalidArgument{InvalidProperty: "programPath"})
	}
	args, err := splitArgs(spec.Arguments)
	if err != nil {
		return refuse(err.Error(), &types.InvalidArgument{InvalidProperty: "arguments"})
	}
	rec.Args = args
	dir, err := g.vmDir(moref)
	if err != nil {
		return refuse(err.Error(), &types.GuestOperationsUnavailable{})
	}
	cmd := exec.Command(spec.ProgramPath, args...)
	cmd.Dir = dir
	if spec.WorkingDirectory != "" {
		cmd.Dir = spec.WorkingDirectory
	}
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + dir,
		"VMGUARD_LAB_VM=" + moref, "VMGUARD_LAB_GUEST_DIR=" + dir}, spec.EnvVariables...)
	// Setpgid: Terminate and power-off kill its children too. Pdeathsig: a program
	// never outlives the simulator (a test's lab going down ends its guests' programs).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		// What ESXi answers for a program that is not there or not executable.
		return refuse(fmt.Sprintf("cannot start %s: %v", spec.ProgramPath, err), &types.FileNotFound{FileFault: types.FileFault{File: spec.ProgramPath}})
	}
	rec.cmd, rec.Pid = cmd, int64(cmd.Process.Pid)
	g.mu.Lock()
	g.procs = append(g.procs, rec)
	g.mu.Unlock()
	go g.wait(rec)
	return rec.Pid, "", nil
}

// exitCode is a program's exit code, or 128+signal when it was killed.
func (g *guestProc) exitCode(err error) int32 {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int32(ws.Signal())
		}
		return int32(ee.ExitCode())
	}
	if err != nil {
		return -1
	}
	return 0
}

func (g *guestOps) wait(p *guestProc) {
	err := p.cmd.Wait()
	now := time.Now()
	code := p.exitCode(err)
	g.mu.Lock()
	p.EndTime, p.ExitCode = &now, &code
	g.mu.Unlock()
}

// find returns the started (not refused) programs of a VM, all or by pid.
func (g *guestOps) find(moref string, pids []int64) []guestProc {
	want := map[int64]bool{}
	for _, p := range pids {
		want[p] = true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []guestProc
	for _, p := range g.procs {
		if p.VM == moref && p.Pid != 0 && (len(want) == 0 || want[p.Pid]) {
			out = append(out, *p)
		}
	}
	return out
}

func (g *guestOps) terminate(moref string, pid int64) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		if p.VM == moref && p.Pid == pid && p.cmd != nil {
			if p.EndTime == nil {
				p.Terminated = true
				_ = syscall.Kill(-int(pid), syscall.SIGKILL)
			}
			return true
		}
	}
	return false
}

// stopAll kills every program of a VM still running, as powering the guest off
// would (their exit code reads 128+9).
func (g *guestOps) stopAll(moref string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		if p.VM == moref && p.cmd != nil && p.EndTime == nil {
			_ = syscall.Kill(-int(p.Pid), syscall.SIGKILL)
		}
	}
}

// history is every call for a VM, refused ones included, in call order.
func (g *guestOps) history(moref string) []guestProc {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := []guestProc{}
	for _, p := range g.procs {
		if p.VM == moref {
			out = append(out, *p)
		}
	}
	return out
}

// splitArgs splits GuestProgramSpec.arguments the way a POSIX shell splits
// words (quotes and backslashes), without expanding anything.
func splitArgs(s string) ([]string, error) {
	out := []string{}
	var cur strings.Builder
	inWord, quote := false, rune(0)
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			if r == '"' {
				quote = 0
			} else if r == '\\' && i+1 < len(rs) && strings.ContainsRune(`"\$`+"`", rs[i+1]) {
				i++
				cur.WriteRune(rs[i])
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == '\\':
			if i+1 < len(rs) {
				i++
				cur.WriteRune(rs[i])
			}
			inWord = true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("arguments: unterminated %c quote", quote)
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}

// guestPM wraps vcsim's GuestProcessManager for the duration of one call.
type guestPM struct {
	*simulator.GuestProcessManager
	ops *guestOps
}

// admit checks the guest login and the VM's power state, as every guest call
// after the start does; it returns the VM's moref or the fault ESXi would send.
func (m *guestPM) admit(ctx *simulator.Context, auth types.BaseGuestAuthentication, vm types.ManagedObjectReference) (string, *soap.Fault) {
	if f := m.ops.login(auth); f != nil {
		return "", simulator.Fault("Failed to authenticate with the guest operating system using the supplied credentials.", f)
	}
	moref, f := checkVM(ctx, vm)
	if f != nil {
		return "", simulator.Fault("The operation is not allowed in the current power state.", f)
	}
	return moref, nil
}

func (m *guestPM) StartProgramInGuest(ctx *simulator.Context, req *types.StartProgramInGuest) soap.HasFault {
	body := new(methods.StartProgramInGuestBody)
	pid, msg, f := m.ops.start(ctx, req)
	if f != nil {
		body.Fault_ = simulator.Fault(msg, f)
		return body
	}
	body.Res = &types.StartProgramInGuestResponse{Returnval: pid}
	return body
}

func (m *guestPM) ListProcessesInGuest(ctx *simulator.Context, req *types.ListProcessesInGuest) soap.HasFault {
	body := new(methods.ListProcessesInGuestBody)
	moref, fault := m.admit(ctx, req.Auth, req.Vm)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	body.Res = new(types.ListProcessesInGuestResponse)
	for _, p := range m.ops.find(moref, req.Pids) {
		info := types.GuestProcessInfo{
			Name: filepath.Base(p.Program), Pid: p.Pid, Owner: p.User,
			CmdLine: strings.Join(append([]string{p.Program}, p.Args...), " "), StartTime: p.StartTime,
		}
		if p.EndTime != nil {
			info.EndTime, info.ExitCode = p.EndTime, *p.ExitCode
		}
		body.Res.Returnval = append(body.Res.Returnval, info)
	}
	return body
}

func (m *guestPM) TerminateProcessInGuest(ctx *simulator.Context, req *types.TerminateProcessInGuest) soap.HasFault {
	body := new(methods.TerminateProcessInGuestBody)
	moref, fault := m.admit(ctx, req.Auth, req.Vm)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	if !m.ops.terminate(moref, req.Pid) {
		body.Fault_ = simulator.Fault(fmt.Sprintf("no process %d in the guest", req.Pid), &types.GuestProcessNotFound{Pid: req.Pid})
		return body
	}
	body.Res = new(types.TerminateProcessInGuestResponse)
	return body
}

// guestProcesses is GET /vms/{moref}/guest/processes.
func (c *control) guestProcesses(r *http.Request) (any, error) {
	moref := r.PathValue("moref")
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: moref}
	if _, ok := c.store.reg.Get(ref).(*simulator.VirtualMachine); !ok {
		return nil, errorf(http.StatusNotFound, "no VM %s", moref)
	}
	if c.store.guest == nil {
		return []guestProc{}, nil
	}
	return c.store.guest.history(moref), nil
}
