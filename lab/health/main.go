// Command vmguard-health judges Kubernetes objects the way GitOps tools do, so the
// lab's tests can check that vmguard's status reads right to them:
//
//	vmguard-health kstatus [-o json] FILE...
//	vmguard-health lua -scripts DIR [-o json] FILE...
//	vmguard-health flux -exprs FILE [-o json] FILE...
//
// kstatus runs sigs.k8s.io/cli-utils' kstatus (status.Compute), what Flux and
// `kubectl wait`-style tooling read: Current, InProgress, Failed, Terminating, ...
// lua runs Argo CD health checks (DIR/<group>_<Kind>.lua) under gopher-lua, the
// interpreter Argo CD embeds, with Argo CD's contract: the object is the global
// `obj`, the script returns a table with `status` (Healthy, Progressing, Degraded,
// Suspended, Missing, Unknown) and `message`.
// flux evaluates a Flux Kustomization's spec.healthCheckExprs (CEL) as Flux's
// kustomize-controller does (see fluxChecks); -exprs names a YAML file holding a
// `healthCheckExprs:` list.
//
// FILE holds one or more objects: JSON, YAML (documents separated by ---), or a
// List (`kind: List`, or a JSON array); "-" is standard input. One line is printed
// per object, in input order; with -o json each line is a JSON object
// {"kind", "namespace", "name", "status", "message"}. An object that cannot be
// judged (no script for its kind, a script error, an invalid status) makes the
// exit status 1 after every object was printed; bad input makes it 2.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
)

// verdict is one object's judgement, as printed.
type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
	Error     string `json:"error,omitempty"`
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  vmguard-health kstatus [-o json] FILE...
  vmguard-health lua -scripts DIR [-o json] FILE...
  vmguard-health flux -exprs FILE [-o json] FILE...
`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	flags := flag.NewFlagSet(cmd, flag.ExitOnError)
	output := flags.String("o", "table", `output: "table" or "json" (one JSON object per line)`)
	scripts := flags.String("scripts", "", "lua: the directory of <group>_<Kind>.lua health checks")
	exprs := flags.String("exprs", "", "flux: a YAML file with a healthCheckExprs list")
	_ = flags.Parse(args)
	if flags.NArg() == 0 || (*output != "table" && *output != "json") {
		usage()
	}
	var judge func(map[string]any) verdict
	switch cmd {
	case "kstatus":
		judge = kstatusVerdict
	case "lua":
		if *scripts == "" {
			usage()
		}
		checks := &luaChecks{dir: *scripts}
		judge = checks.verdict
	case "flux":
		if *exprs == "" {
			usage()
		}
		checks, err := loadFluxChecks(*exprs)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vmguard-health:", err)
			os.Exit(2)
		}
		judge = checks.verdict
	default:
		usage()
	}
	objects, err := readAll(flags.Args())
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmguard-health:", err)
		os.Exit(2)
	}
	verdicts := make([]verdict, 0, len(objects))
	failed := false
	for _, obj := range objects {
		v := judge(obj)
		failed = failed || v.Error != ""
		verdicts = append(verdicts, v)
	}
	if err := print(os.Stdout, verdicts, *output); err != nil {
		fmt.Fprintln(os.Stderr, "vmguard-health:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

func identify(obj map[string]any) verdict {
	meta, _ := obj["metadata"].(map[string]any)
	v := verdict{}
	v.Kind, _ = obj["kind"].(string)
	v.Namespace, _ = meta["namespace"].(string)
	v.Name, _ = meta["name"].(string)
	return v
}

func print(w io.Writer, verdicts []verdict, output string) error {
	if output == "json" {
		enc := json.NewEncoder(w)
		for _, v := range verdicts {
			if err := enc.Encode(v); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tSTATUS\tMESSAGE")
	for _, v := range verdicts {
		msg := v.Message
		if v.Error != "" {
			msg = "error: " + strings.Join(strings.Fields(v.Error), " ")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Kind, v.Namespace, v.Name, v.Status, msg)
	}
	return errors.Join(tw.Flush())
}
