// argocd-health reads Kubernetes objects as JSON on stdin (one object, or a List as printed by
// `kubectl get -o json`) and prints, per object, one JSON line with the health Argo CD gives it:
// {"kind":..,"namespace":..,"name":..,"status":"Healthy|Progressing|Degraded|...","message":..}.
//
// Health checks are given as `--health GROUP/KIND=FILE` (the Lua file an operator puts under
// `resource.customizations.health.GROUP_KIND` in argocd-cm). The objects go through
// gitops-engine's health.GetResourceHealth with Argo CD's lua.ResourceHealthOverrides, the call
// Argo CD's application controller makes for every live resource, so the tests see what Argo CD
// shows. Exit status 1 on unreadable input or a Lua error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/argoproj/gitops-engine/pkg/health"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	appv1 "github.com/argoproj/argo-cd/v3/pkg/apis/application/v1alpha1"
	"github.com/argoproj/argo-cd/v3/util/lua"
)

type line struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

type checks map[string]appv1.ResourceOverride

func (c checks) String() string { return fmt.Sprint(len(c)) }

func (c checks) Set(v string) error {
	key, file, ok := strings.Cut(v, "=")
	if !ok || !strings.Contains(key, "/") {
		return fmt.Errorf("want GROUP/KIND=FILE, got %q", v)
	}
	script, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	c[key] = appv1.ResourceOverride{HealthLua: string(script)}
	return nil
}

func main() {
	overrides := checks{}
	flag.Var(overrides, "health", "GROUP/KIND=FILE: a Lua health check (repeatable)")
	flag.Parse()
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(raw); err != nil {
		fail("stdin is not a Kubernetes object: %v", err)
	}
	items := []unstructured.Unstructured{obj}
	if obj.IsList() {
		list, err := obj.ToList()
		if err != nil {
			fail("reading the list: %v", err)
		}
		items = list.Items
	}
	enc := json.NewEncoder(os.Stdout)
	for i := range items {
		u := &items[i]
		hs, err := health.GetResourceHealth(u, lua.ResourceHealthOverrides(overrides))
		if err != nil {
			fail("health of %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		out := line{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
		if hs != nil {
			out.Status, out.Message = string(hs.Status), hs.Message
		}
		_ = enc.Encode(out)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-health: "+format+"\n", args...)
	os.Exit(1)
}
