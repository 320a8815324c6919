// Command health computes what GitOps tools show for costmap objects, with their own code:
// the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus, what Flux, Config Sync and
// `kubectl wait`-style tooling use) and an Argo CD health check written in Lua, run by
// gopher-lua (the Lua runtime Argo CD embeds).
//
// Usage: health [--lua FILE] < objects.json
//
// objects.json is one object or a v1 List (`kubectl get -o json`). For each object it prints
// one JSON line: {"name", "kstatus", "kstatusMessage", "argocd", "argocdMessage"}.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name           string `json:"name"`
	Kstatus        string `json:"kstatus"`
	KstatusMessage string `json:"kstatusMessage"`
	Argocd         string `json:"argocd,omitempty"`
	ArgocdMessage  string `json:"argocdMessage,omitempty"`
}

func main() {
	luaFile := flag.String("lua", "", "an Argo CD health check (Lua) to run on each object")
	flag.Parse()
	if err := run(*luaFile, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "health:", err)
		os.Exit(1)
	}
}

func run(luaFile string, in io.Reader, out io.Writer) error {
	var script string
	if luaFile != "" {
		bytes, err := os.ReadFile(luaFile)
		if err != nil {
			return err
		}
		script = string(bytes)
	}
	objects, err := readObjects(in)
	if err != nil {
		return err
	}
	encoder := json.NewEncoder(out)
	for _, object := range objects {
		r := result{Name: object.GetName()}
		computed, err := status.Compute(object)
		if err != nil {
			return fmt.Errorf("kstatus of %s: %w", object.GetName(), err)
		}
		r.Kstatus, r.KstatusMessage = computed.Status.String(), computed.Message
		if script != "" {
			r.Argocd, r.ArgocdMessage, err = argocdHealth(script, object.Object)
			if err != nil {
				return fmt.Errorf("the Lua health check on %s: %w", object.GetName(), err)
			}
		}
		if err := encoder.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func readObjects(in io.Reader) ([]*unstructured.Unstructured, error) {
	bytes, err := io.ReadAll(in)
	if err != nil {
		return nil, fmt.Errorf("reading the objects: %w", err)
	}
	// As the API machinery decodes objects: whole numbers as int64, which kstatus expects.
	var raw map[string]interface{}
	if err := utiljson.Unmarshal(bytes, &raw); err != nil {
		return nil, fmt.Errorf("reading the objects: %w", err)
	}
	if items, ok := raw["items"].([]interface{}); ok && raw["kind"] == "List" {
		objects := make([]*unstructured.Unstructured, 0, len(items))
		for _, item := range items {
			object, ok := item.(map[string]interface{})
			if !ok {
				return nil, fmt.Errorf("a List item is not an object")
			}
			objects = append(objects, &unstructured.Unstructured{Object: object})
		}
		return objects, nil
	}
	return []*unstructured.Unstructured{{Object: raw}}, nil
}

// argocdHealth runs script as Argo CD runs a resource health check: the object in the global
// `obj`, the returned table's `status` and `message`.
func argocdHealth(script string, object map[string]interface{}) (string, string, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: false})
	defer state.Close()
	state.SetGlobal("obj", toLua(state, object))
	if err := state.DoString(script); err != nil {
		return "", "", err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", state.Get(-1).Type())
	}
	return lua.LVAsString(returned.RawGetString("status")), lua.LVAsString(returned.RawGetString("message")), nil
}

// toLua converts decoded JSON into Lua values the way Argo CD does: objects and arrays to
// tables (arrays 1-based), numbers to numbers, null to nil.
func toLua(state *lua.LState, value interface{}) lua.LValue {
	switch v := value.(type) {
	case map[string]interface{}:
		table := state.NewTable()
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	case []interface{}:
		table := state.NewTable()
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	default:
		return lua.LNil
	}
}
