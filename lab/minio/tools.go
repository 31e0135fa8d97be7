//go:build tools

// Package tools records the MinIO server main package the lab builds from this
// module, so that `go mod tidy` keeps its dependencies in go.sum.
package tools

import _ "github.com/minio/minio"
