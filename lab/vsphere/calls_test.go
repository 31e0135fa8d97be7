package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const snapshotRequest = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Header><operationID>op-1</operationID></soapenv:Header>
<soapenv:Body><CreateSnapshotEx_Task xmlns="urn:vim25"><_this type="VirtualMachine">vm-42</_this><name>s</name></CreateSnapshotEx_Task></soapenv:Body>
</soapenv:Envelope>`

const reconfigRequest = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<ReconfigVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">vm-7</_this><spec>
<extraConfig><key>vmguard.x</key><value>1</value></extraConfig>
<deviceChange><operation>add</operation><fileOperation>create</fileOperation><device/></deviceChange>
<deviceChange><operation>add</operation><device/></deviceChange>
<extraConfig><key>vmguard.y</key><value>2</value></extraConfig>
</spec></ReconfigVM_Task></soapenv:Body></soapenv:Envelope>`

func TestCallLogRecordsEachDistinctCallOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "calls.jsonl")
	calls, err := newCallLog(path)
	if err != nil {
		t.Fatal(err)
	}
	var bodies []string
	h := calls.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := new(strings.Builder)
		_, _ = bufio.NewReader(r.Body).WriteTo(b)
		bodies = append(bodies, b.String())
	}), "/sdk")
	send := func(method, target, body, agent string) {
		r := httptest.NewRequest(method, target, strings.NewReader(body))
		r.Header.Set("User-Agent", agent)
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	send("POST", "/sdk", snapshotRequest, "vmguard/1")
	send("POST", "/sdk", snapshotRequest, "vmguard/1")
	send("POST", "/sdk", snapshotRequest, "pyvmomi")
	send("POST", "/sdk", reconfigRequest, "vmguard/1")
	send("GET", "/rest/com/vmware/cis/tagging/tag/id:urn:vmomi:InventoryServiceTag:abc:GLOBAL", "", "vmguard/1")
	send("POST", "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-objects-on-tags", "{}", "vmguard/1")
	if err := calls.Close(); err != nil {
		t.Fatal(err)
	}
	if bodies[0] != snapshotRequest {
		t.Fatalf("the handler got another body: %q", bodies[0])
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []call
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var c call
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	want := []call{
		{"vmguard/1", "soap", "VirtualMachine", "CreateSnapshotEx_Task", ""},
		{"pyvmomi", "soap", "VirtualMachine", "CreateSnapshotEx_Task", ""},
		{"vmguard/1", "soap", "VirtualMachine", "ReconfigVM_Task", "deviceChange:add,deviceChange:add/create,extraConfig"},
		{"vmguard/1", "rest", "/rest/com/vmware/cis/tagging/tag/id:*", "GET", ""},
		{"vmguard/1", "rest", "/rest/com/vmware/cis/tagging/tag-association?~action=list-attached-objects-on-tags", "POST", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %v, want %v", len(got), got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}
