// server.go serves vcsim's SDK and the vAPI REST endpoint over HTTPS with the
// lab's certificate, and makes the lab's username and password the only way
// in: vcsim by default accepts any login, SAML tokens and certificate logins,
// and its REST side accepts "SIGN" tokens and an unauthenticated JSON-RPC
// session create. Those doors are closed here.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	vapisim "github.com/vmware/govmomi/vapi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// serverURLs are the public addresses of the SDK server.
type serverURLs struct {
	sdk  *url.URL // https://127.0.0.1:P/sdk, no credentials
	rest *url.URL // https://127.0.0.1:P/rest
	user *url.Userinfo
}

func (u *serverURLs) withUser() *url.URL {
	x := *u.sdk
	x.User = u.user
	return &x
}

// loopbackAddr checks that addr is host:port on a loopback address that can
// be listened on, and picks a free port for port 0, because the SDK URL must
// be known before serving.
func loopbackAddr(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%s: only loopback addresses are allowed", addr)
	}
	// Also fails early on a busy port, before minutes of inventory building.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// loadCertificate reads -tls-cert/-tls-key, or makes a self-signed pair for
// the loopback names in dir. It returns the path of the certificate in use.
func loadCertificate(certFile, keyFile, dir string) (tls.Certificate, string, error) {
	if (certFile == "") != (keyFile == "") {
		return tls.Certificate{}, "", errors.New("-tls-cert and -tls-key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		return cert, certFile, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "vmguard-vcsim", Organization: []string{"vmguard lab"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, "", err
	}
	certPath := filepath.Join(dir, "vcsim.crt")
	if err := os.WriteFile(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "vcsim.key"), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPath, err
}

// labTagManager is the set of methods simulator.Service.Handle looks for to
// wire vAPI tags into the SOAP side (tag specs in CreateVM and the like). The
// REST guard must pass them through, or wrapping the handler would cut that
// link.
type labTagManager interface {
	AttachedObjects(string) ([]types.ManagedObjectReference, types.BaseMethodFault)
	AttachedTags(types.ManagedObjectReference) ([]string, types.BaseMethodFault)
	AttachTag(types.ManagedObjectReference, string) types.BaseMethodFault
	DetachTag(types.ManagedObjectReference, string) types.BaseMethodFault
	GetTagByCategoryAndName(string, string) (string, types.BaseMethodFault)
	GetTagCategoryAndName(string) (string, string, types.BaseMethodFault)
}

// restGuard refuses the vAPI simulator's credential-less ways in.
type restGuard struct {
	http.Handler
	labTagManager
}

func (g *restGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if auth := r.Header.Get("Authorization"); auth != "" && !strings.HasPrefix(auth, "Basic ") {
		http.Error(w, "only basic authentication is accepted", http.StatusUnauthorized)
		return
	}
	if strings.TrimSuffix(r.URL.Path, "/") == "/api" {
		http.Error(w, "JSON-RPC is not served by the lab", http.StatusNotFound)
		return
	}
	g.Handler.ServeHTTP(w, r)
}

// datastoreGuard asks for the lab credentials on vcsim's /folder datastore
// file access, which vcsim serves to anyone.
func datastoreGuard(next http.Handler, valid func(user, pass string) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/folder") {
			if u, p, ok := r.BasicAuth(); !ok || !valid(u, p) {
				w.Header().Set("WWW-Authenticate", `Basic realm="vmguard-vcsim"`)
				http.Error(w, "authentication required", http.StatusUnauthorized)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// sdkServer is the HTTPS server for /sdk, /rest and /api.
type sdkServer struct {
	http *http.Server
	urls serverURLs
}

// startSDK registers vcsim's SDK and the vAPI simulator and serves them on
// addr; every request is recorded in calls (calls.go). vcsim's own server (an httptest-style one, fixed handler) is started
// by NewServer; its listener is closed again at once and the same address is
// served by an http.Server of ours, so that every request passes our guard and
// shutdown is graceful.
func startSDK(m *simulator.Model, addr string, user *url.Userinfo, cert tls.Certificate, calls *callLog) (*sdkServer, error) {
	pass, _ := user.Password()
	valid := func(u, p string) bool {
		return subtle.ConstantTimeCompare([]byte(u), []byte(user.Username())) == 1 &&
			subtle.ConstantTimeCompare([]byte(p), []byte(pass)) == 1
	}
	reg := m.Map()
	reg.SessionManager().ValidLogin = func(req *types.Login) bool { return valid(req.UserName, req.Password) }

	svc := m.Service
	svc.Listen = &url.URL{Host: addr, User: user}
	svc.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	svc.RegisterEndpoints = false // vAPI is registered below, behind restGuard
	svc.ServeMux = http.NewServeMux()
	svc.RegisterSDK(reg, reg.Path+"/vimService")

	urls := serverURLs{
		sdk:  &url.URL{Scheme: "https", Host: addr, Path: reg.Path},
		rest: &url.URL{Scheme: "https", Host: addr, Path: "/rest"},
		user: user,
	}
	patterns, h := vapisim.New(urls.withUser(), reg)
	tm, ok := h.(labTagManager)
	if !ok {
		return nil, errors.New("vapi simulator no longer offers the tag manager methods")
	}
	for _, p := range patterns {
		svc.Handle(p, &restGuard{Handler: h, labTagManager: tm})
	}

	vc, err := newVcsimServer(svc)
	if err != nil {
		return nil, err
	}
	handler, tlsConf := vc.Config.Handler, vc.TLS
	vc.Listener.Close()

	var l net.Listener
	for range 50 { // the port was ours a moment ago; allow the kernel to agree
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           calls.wrap(datastoreGuard(handler, valid), reg.Path),
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() {
		if err := srv.Serve(tls.NewListener(l, tlsConf)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "sdk server:", err)
		}
	}()
	return &sdkServer{http: srv, urls: urls}, nil
}

// newVcsimServer runs Service.NewServer, which panics when it cannot listen.
func newVcsimServer(svc *simulator.Service) (s *simulator.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("sdk listener: %v", r)
		}
	}()
	return svc.NewServer(), nil
}
