// calls.go records which calls reach the simulator, so that the tests can
// check vmguard's vCenter role against them: govmomi's simulator checks no
// privileges at all (any logged-in session may call anything).
//
// Every request to the SDK server is classified as a SOAP call (the method
// and the managed object type of its _this), a vAPI REST call (HTTP method and
// path, with object ids replaced by "*"), or another HTTP request (method and
// path). The first time a (User-Agent, call) pair is seen it is appended to
// DIR/calls.jsonl as one JSON object per line:
//
//	{"agent": "vmguard/0.1.0", "api": "soap", "object": "VirtualMachine", "method": "CreateSnapshotEx_Task"}
//	{"agent": "vmguard/0.1.0", "api": "soap", "object": "VirtualMachine", "method": "ReconfigVM_Task", "spec": "changeTrackingEnabled"}
//	{"agent": "vmguard/0.1.0", "api": "rest", "object": "/rest/com/vmware/cis/tagging/tag/id:*", "method": "GET"}
//
// Only distinct pairs are written, so the file stays small however long the
// lab runs; it is emptied when the simulator starts. Nothing of a request's
// body but the method name, the _this type and (for ReconfigVM_Task, whose
// privileges depend on it) the names of the spec's parts is recorded: no
// value, no session id, no credential.
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
)

// call is one line of calls.jsonl.
type call struct {
	Agent  string `json:"agent"`
	API    string `json:"api"`    // soap, rest or http
	Object string `json:"object"` // managed object type (soap) or normalised path
	Method string `json:"method"` // SOAP method or HTTP method
	// Spec: for ReconfigVM_Task, the parts of the ConfigSpec it sets (their
	// privileges differ): field names, deviceChange as "deviceChange:<operation>"
	// or "deviceChange:<operation>/<fileOperation>", sorted, comma-separated.
	Spec string `json:"spec,omitempty"`
}

// callLog appends each distinct call to a file.
type callLog struct {
	mu   sync.Mutex
	seen map[call]bool
	f    *os.File
}

func newCallLog(path string) (*callLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &callLog{seen: map[call]bool{}, f: f}, nil
}

func (l *callLog) record(c call) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[c] {
		return
	}
	l.seen[c] = true
	line, err := json.Marshal(c)
	if err == nil {
		_, err = l.f.Write(append(line, '\n'))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "call log:", err)
	}
}

func (l *callLog) Close() error { return l.f.Close() }

// wrap records each request before handing it on; soapPath is the SDK path.
func (l *callLog) wrap(next http.Handler, soapPath string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := call{Agent: r.UserAgent(), API: "http", Object: r.URL.Path, Method: r.Method}
		switch {
		case r.URL.Path == soapPath && r.Method == http.MethodPost:
			body, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			c.API = "soap"
			c.Method, c.Object, c.Spec = soapCall(body)
		case strings.HasPrefix(r.URL.Path, "/rest/") || strings.HasPrefix(r.URL.Path, "/api/"):
			c.API = "rest"
			c.Object = restPath(r.URL.Path)
			if action := r.URL.Query().Get("~action"); action != "" {
				c.Object += "?~action=" + action
			}
		}
		l.record(c)
		next.ServeHTTP(w, r)
	})
}

// soapRequest is what soapCall decodes of a method element.
type soapRequest struct {
	This struct {
		Type string `xml:"type,attr"`
	} `xml:"_this"`
	Spec struct {
		Parts []struct {
			XMLName       xml.Name
			Operation     string `xml:"operation"`
			FileOperation string `xml:"fileOperation"`
		} `xml:",any"`
	} `xml:"spec"`
}

// soapCall reads the method name (the first element in the SOAP Body), the
// type attribute of its _this element ("?" for what it cannot find) and, for
// ReconfigVM_Task, the parts of the spec it sets.
func soapCall(body []byte) (method, object, spec string) {
	method, object = "?", "?"
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return method, object, ""
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if !inBody {
			inBody = start.Name.Local == "Body"
			continue
		}
		method = start.Name.Local
		var req soapRequest
		if err := d.DecodeElement(&req, &start); err != nil {
			return method, object, ""
		}
		if req.This.Type != "" {
			object = req.This.Type
		}
		if method == "ReconfigVM_Task" {
			spec = specParts(&req)
		}
		return method, object, spec
	}
}

func specParts(req *soapRequest) string {
	seen := map[string]bool{}
	for _, p := range req.Spec.Parts {
		part := p.XMLName.Local
		if part == "deviceChange" {
			part += ":" + p.Operation
			if p.FileOperation != "" {
				part += "/" + p.FileOperation
			}
		}
		seen[part] = true
	}
	parts := make([]string, 0, len(seen))
	for p := range seen {
		parts = append(parts, p)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// restPath replaces the object ids in a vAPI path (its "id:..." segments) by
// "id:*", so that a call is recorded once whatever object it names.
func restPath(path string) string {
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if strings.HasPrefix(p, "id:") {
			parts[i] = "id:*"
		}
	}
	return strings.Join(parts, "/")
}
