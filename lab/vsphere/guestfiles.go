// guestfiles.go lets callers read a file out of a lab guest the way ESXi
// does: InitiateFileTransferFromGuest answers a one-time URL (on the control
// server; ESXi answers https://*/guestFile?...) that a GET downloads, and
// DeleteFileInGuest removes the file. vcsim's own GuestFileManager serves
// only container-backed VMs (docker). The lab guest is the host, so a guest
// path is a host path: only regular files under /tmp or the VM's guest
// directory are served or deleted. Logins and
// power state are checked as for guest programs (guest.go). Lab only.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// guestFileTTL bounds how long a transfer URL stays valid (ESXi: minutes).
const guestFileTTL = 5 * time.Minute

type guestTransfer struct {
	path    string
	expires time.Time
}

// guestFiles holds the pending transfers; baseURL is the control server's.
type guestFiles struct {
	baseURL string

	mu      sync.Mutex
	pending map[string]guestTransfer
}

// servable maps a guest path to the host file it may serve, or "".
func (g *guestOps) servable(moref, path string) string {
	if !filepath.IsAbs(path) {
		return ""
	}
	clean := filepath.Clean(path)
	// "/tmp", not os.TempDir(): main points TMPDIR at vcsim's meta directory, while
	// the guest programs see the host's /tmp.
	for _, root := range []string{"/tmp", filepath.Join(g.dir, filepath.Base(moref))} {
		if clean == root || !strings.HasPrefix(clean, filepath.Clean(root)+string(filepath.Separator)) {
			continue
		}
		if st, err := os.Lstat(clean); err == nil && st.Mode().IsRegular() {
			return clean
		}
	}
	return ""
}

type guestFM struct {
	*simulator.GuestFileManager
	pm *guestPM
}

func (m *guestFM) InitiateFileTransferFromGuest(ctx *simulator.Context, req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferFromGuestBody)
	moref, fault := m.pm.admit(ctx, req.Auth, req.Vm)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	files := m.pm.ops.files
	path := m.pm.ops.servable(moref, req.GuestFilePath)
	if path == "" || files == nil {
		body.Fault_ = simulator.Fault("no such file in the guest: "+req.GuestFilePath,
			&types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}})
		return body
	}
	st, err := os.Stat(path)
	if err != nil {
		body.Fault_ = simulator.Fault(err.Error(), &types.FileNotFound{FileFault: types.FileFault{File: req.GuestFilePath}})
		return body
	}
	raw := make([]byte, 16)
	_, _ = rand.Read(raw)
	token := hex.EncodeToString(raw)
	files.mu.Lock()
	files.pending[token] = guestTransfer{path: path, expires: time.Now().Add(guestFileTTL)}
	files.mu.Unlock()
	body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
		Attributes: &types.GuestPosixFileAttributes{GuestFileAttributes: types.GuestFileAttributes{ModificationTime: ptrTime(st.ModTime())}},
		Size:       st.Size(),
		Url:        files.baseURL + "/guestFile?token=" + token,
	}}
	return body
}

func ptrTime(t time.Time) *time.Time { return &t }

func (m *guestFM) DeleteFileInGuest(ctx *simulator.Context, req *types.DeleteFileInGuest) soap.HasFault {
	body := new(methods.DeleteFileInGuestBody)
	moref, fault := m.pm.admit(ctx, req.Auth, req.Vm)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	path := m.pm.ops.servable(moref, req.FilePath)
	if path == "" || os.Remove(path) != nil {
		body.Fault_ = simulator.Fault("no such file in the guest: "+req.FilePath,
			&types.FileNotFound{FileFault: types.FileFault{File: req.FilePath}})
		return body
	}
	body.Res = new(types.DeleteFileInGuestResponse)
	return body
}

// serve is GET /guestFile?token=T on the control server: the file, once.
func (g *guestFiles) serve(w http.ResponseWriter, r *http.Request) {
	token := r.URL.Query().Get("token")
	g.mu.Lock()
	t, ok := g.pending[token]
	delete(g.pending, token)
	g.mu.Unlock()
	if !ok || time.Now().After(t.expires) {
		http.Error(w, "no such transfer", http.StatusNotFound)
		return
	}
	f, err := os.Open(t.path)
	if err != nil {
		http.Error(w, "the file is gone", http.StatusNotFound)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = io.Copy(w, f)
}
