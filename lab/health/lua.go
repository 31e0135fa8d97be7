package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The health statuses Argo CD accepts from a script; anything else is Unknown there,
// and an error here.
var argoHealth = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// Argo CD gives a health script one second by default (its Lua VM timeout).
const scriptTimeout = time.Second

// luaChecks runs the Argo CD health checks in dir, keyed as Argo CD keys them in
// argocd-cm (resource.customizations.health.<group>_<Kind>).
type luaChecks struct {
	dir     string
	scripts map[string]string
}

func (c *luaChecks) script(key string) (string, error) {
	if s, ok := c.scripts[key]; ok {
		return s, nil
	}
	data, err := os.ReadFile(filepath.Join(c.dir, key+".lua"))
	if err != nil {
		return "", err
	}
	if c.scripts == nil {
		c.scripts = map[string]string{}
	}
	c.scripts[key] = string(data)
	return string(data), nil
}

func (c *luaChecks) verdict(obj map[string]any) verdict {
	v := identify(obj)
	apiVersion, _ := obj["apiVersion"].(string)
	group := ""
	if i := strings.Index(apiVersion, "/"); i >= 0 {
		group = apiVersion[:i]
	}
	script, err := c.script(group + "_" + v.Kind)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Status, v.Message, err = runHealthScript(obj, script)
	if err != nil {
		v.Error = err.Error()
	}
	return v
}

// runHealthScript mirrors Argo CD's health Lua VM (util/lua in argo-cd): the libraries
// a health check gets are package, base and table only (no string, os or io: a script
// that needs them fails here as it would there), `obj` is the object decoded into
// tables, and the script's return value must be a table.
func runHealthScript(obj map[string]any, script string) (string, string, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return "", "", err
	}
	table, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("expected a table from the health script, not %s", L.Get(-1).Type())
	}
	status := lua.LVAsString(table.RawGetString("status"))
	message := lua.LVAsString(table.RawGetString("message"))
	if !argoHealth[status] {
		return status, message, fmt.Errorf("not an Argo CD health status: %q", status)
	}
	return status, message, nil
}

// toLua converts decoded JSON into Lua values as Argo CD does: objects and arrays
// become tables (arrays 1-based), numbers LNumber, null nil.
func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case map[string]any:
		t := L.CreateTable(0, len(v))
		for key, item := range v {
			t.RawSetString(key, toLua(L, item))
		}
		return t
	case []any:
		t := L.CreateTable(len(v), 0)
		for _, item := range v {
			t.Append(toLua(L, item))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case json.Number:
		f, _ := v.Float64()
		return lua.LNumber(f)
	}
	return lua.LNil
}
