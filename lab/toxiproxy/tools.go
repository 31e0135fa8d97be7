//go:build tools

// Package tools records the toxiproxy server main package the lab builds from this
// module, so that `go mod tidy` keeps its dependencies in go.sum.
package tools

import _ "github.com/Shopify/toxiproxy/v2/cmd/server"
