package main

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// kstatusVerdict is status.Compute's result for obj, unchanged.
func kstatusVerdict(obj map[string]any) verdict {
	v := identify(obj)
	res, err := status.Compute(&unstructured.Unstructured{Object: obj})
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Status, v.Message = string(res.Status), res.Message
	return v
}
