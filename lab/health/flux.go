package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// fluxExprs is one entry of a Flux Kustomization's spec.healthCheckExprs.
type fluxExprs struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Current    string `json:"current"`
	Failed     string `json:"failed"`
	InProgress string `json:"inProgress"`
}

// fluxChecks judges objects as Flux's kustomize-controller does with healthCheckExprs
// (Flux RFC 0009, fluxcd/pkg/runtime/cel): a status.observedGeneration that differs
// from metadata.generation is InProgress; then inProgress, failed, current are
// evaluated in that order and the first true one decides; none true is InProgress.
// The expressions are parsed, not compiled, in Flux's CEL environment, with the
// object's top-level fields as variables; an expression that fails to evaluate (e.g.
// a field the object lacks) makes the object Unknown, which Flux waits on like
// InProgress until its timeout.
type fluxChecks struct {
	byKind map[string]fluxExprs
}

func loadFluxChecks(path string) (*fluxChecks, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		HealthCheckExprs []fluxExprs `json:"healthCheckExprs"`
	}
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c := &fluxChecks{byKind: map[string]fluxExprs{}}
	for _, e := range doc.HealthCheckExprs {
		if e.Current == "" {
			return nil, fmt.Errorf("%s: %s/%s: current is required", path, e.APIVersion, e.Kind)
		}
		c.byKind[e.APIVersion+"/"+e.Kind] = e
	}
	return c, nil
}

func (c *fluxChecks) verdict(obj map[string]any) verdict {
	v := identify(obj)
	apiVersion, _ := obj["apiVersion"].(string)
	e, ok := c.byKind[apiVersion+"/"+v.Kind]
	if !ok {
		v.Error = "no healthCheckExprs for " + apiVersion + "/" + v.Kind
		return v
	}
	u := &unstructured.Unstructured{Object: obj}
	observed, found, _ := unstructured.NestedInt64(obj, "status", "observedGeneration")
	if found && observed != u.GetGeneration() {
		v.Status, v.Message = "InProgress", "generation not observed yet"
		return v
	}
	for _, step := range []struct{ expr, status string }{
		{e.InProgress, "InProgress"}, {e.Failed, "Failed"}, {e.Current, "Current"},
	} {
		if step.expr == "" {
			continue
		}
		yes, err := evalBool(step.expr, obj)
		if err != nil {
			v.Status, v.Message = "Unknown", strings.Join(strings.Fields(err.Error()), " ")
			return v
		}
		if yes {
			v.Status, v.Message = step.status, step.expr
			return v
		}
	}
	v.Status, v.Message = "InProgress", "no expression is true"
	return v
}

// evalBool evaluates expr over obj in the CEL environment Flux uses for health checks.
func evalBool(expr string, obj map[string]any) (bool, error) {
	env, err := cel.NewEnv(
		cel.HomogeneousAggregateLiterals(),
		cel.EagerlyValidateDeclarations(true),
		cel.DefaultUTCTimeZone(true),
		cel.CrossTypeNumericComparisons(true),
		cel.OptionalTypes(),
		ext.Strings(),
		ext.Sets(),
		ext.Encoders(),
	)
	if err != nil {
		return false, err
	}
	ast, issues := env.Parse(expr)
	if issues != nil && issues.Err() != nil {
		return false, issues.Err()
	}
	prg, err := env.Program(ast, cel.EvalOptions(cel.OptOptimize), cel.InterruptCheckFrequency(100))
	if err != nil {
		return false, err
	}
	out, _, err := prg.ContextEval(context.Background(), obj)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("not a boolean: %v", out)
	}
	return bool(b), nil
}
