// kstatus reads Kubernetes objects as JSON on stdin (one object, or a List as printed by
// `kubectl get -o json`) and prints, per object, one JSON line with what kstatus computes:
// {"kind":..,"namespace":..,"name":..,"status":"Current|InProgress|Failed|...","message":..}.
// It calls sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the function Flux's health checks
// and kpt use, so the tests see exactly what those tools see. Exit status 1 on unreadable input.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type line struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
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
		res, err := status.Compute(u)
		if err != nil {
			fail("kstatus on %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		_ = enc.Encode(line{u.GetKind(), u.GetNamespace(), u.GetName(), res.Status.String(), res.Message})
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
