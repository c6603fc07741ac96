package kind

import (
	"fmt"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// BenchmarkKindPodSetup is what a user of Marsha's clusters waits for:
// a pod of public-k8s annotated with a vWire to an endpoint pod of
// private-k8s, from `kubectl apply` to the first ping over the vWire that
// gets its reply (the app starts only once the vWire is up); yardstick:
// the same pod without the annotation, from `kubectl apply` to Running.
// Both are polled with kubectl every 100 ms or so, one pod of each at a
// time, 8 of each. make bench runs it (BENCH=quick skips it: CI runs
// make e2e-kind).
func BenchmarkKindPodSetup(b *testing.B) {
	w := newWorld(b)
	pub, priv := w.domains["public-k8s"], w.domains["private-k8s"]
	w.kubectl(priv, manifest("pk-echo"), "apply", "-f", "-")
	w.pod(priv, "pk-echo", `vwire.io/endpoint: "pk-echo?cidr=172.16.41.0/24"`)
	kubectl := e2e.ToolPath(b, "kubectl")
	in := func(args ...string) (string, error) {
		return w.try("", kubectl, append([]string{"--kubeconfig", pub.kubeconfig}, args...)...)
	}
	create := func(name, annotations string) time.Time {
		start := time.Now()
		w.kubectl(pub, fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, annotations: {%s}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: app, image: \"%s\", imagePullPolicy: Never, command: [sleep, infinity]}]\n",
			name, annotations, w.images["workload"]), "apply", "-f", "-")
		return start
	}
	poll := func(what string, cond func() bool) { w.poll(what, 2*time.Minute, 100*time.Millisecond, cond) }
	var plain, wired []float64
	for i := range 8 {
		name := fmt.Sprintf("plain-%d", i)
		start := create(name, "")
		poll(name+" Running", func() bool {
			phase, _ := in("get", "pod", name, "-o", "jsonpath={.status.phase}")
			return phase == "Running"
		})
		plain = append(plain, float64(time.Since(start).Microseconds())/1000)

		name = fmt.Sprintf("wired-%d", i)
		start = create(name, `vwire.io/connect: "pk-echo@private-k8s.marsha.example"`)
		var peer string
		poll(name+"'s vWire up", func() bool {
			up, err := in("exec", name, "-c", "vwire-nsm0", "--", "/vwire", "ready", "/run/vwire-ready/nsm0")
			if m := regexp.MustCompile(`-> ([0-9.]+)/`).FindStringSubmatch(up); err == nil && m != nil {
				peer = m[1]
			}
			return peer != ""
		})
		poll(name+"'s first reply from "+peer, func() bool {
			_, err := in("exec", name, "-c", "app", "--", "ping", "-c", "1", "-W", "1", "-I", "nsm0", peer)
			return err == nil
		})
		wired = append(wired, float64(time.Since(start).Microseconds())/1000)
		in("delete", "pod", "plain-"+fmt.Sprint(i), name, "--wait=false")
	}
	b.Logf("created to first reply over a vWire (ms): %v; created to Running without (ms): %v", wired, plain)
	b.ReportMetric(median(wired), "first-reply-ms")
	b.ReportMetric(median(plain), "running-ms")
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}
