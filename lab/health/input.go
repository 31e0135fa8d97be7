package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// readAll returns every object of every file, Lists flattened, in order.
func readAll(files []string) ([]map[string]any, error) {
	var out []map[string]any
	for _, name := range files {
		objs, err := readFile(name)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, objs...)
	}
	return out, nil
}

func readFile(name string) ([]map[string]any, error) {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	// JSON or YAML, several documents: apimachinery's decoder, as kubectl reads files.
	dec := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(r), 4096)
	var out []map[string]any
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		// Integers as int64, as unstructured.Unstructured holds them (kstatus reads
		// metadata.generation with NestedInt64).
		var doc any
		if len(raw) > 0 {
			if err := utiljson.Unmarshal(raw, &doc); err != nil {
				return nil, err
			}
		}
		objs, err := flatten(doc)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
}

// flatten turns one document (an object, a List, a JSON array, or an empty YAML
// document) into objects.
func flatten(doc any) ([]map[string]any, error) {
	switch d := doc.(type) {
	case nil:
		return nil, nil
	case []any:
		var out []map[string]any
		for _, item := range d {
			objs, err := flatten(item)
			if err != nil {
				return nil, err
			}
			out = append(out, objs...)
		}
		return out, nil
	case map[string]any:
		if items, ok := d["items"].([]any); ok && d["kind"] == "List" {
			return flatten(items)
		}
		if _, ok := d["kind"].(string); !ok {
			return nil, errors.New("an object without a kind")
		}
		return []map[string]any{d}, nil
	}
	return nil, fmt.Errorf("not an object: %T", doc)
}
