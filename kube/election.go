package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

var leasesResource = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}

// election is leader election on a coordination.k8s.io Lease, as client-go's
// leaderelection does it, over the dynamic client: client-go's links the
// typed clients of every API group into the binary (15 MB).
type election struct {
	client   dynamic.ResourceInterface
	name     string
	identity string
	duration time.Duration
	log      *slog.Logger

	// The lease record as last read and when it was first read so: another
	// holder's lease runs out by this process's clock, not by the
	// renewTime it wrote with its own.
	seen   string
	seenAt time.Time
}

// run calls lead whenever this process holds the lease, with a context that
// ends when it loses it, until ctx ends; on the way out it gives the lease up.
func (e *election) run(ctx context.Context, lead func(context.Context)) {
	retry := e.duration / 6
	for ctx.Err() == nil {
		if !e.acquire(ctx) {
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		e.log.Info("holding the lease", "lease", e.name, "identity", e.identity)
		leading, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); lead(leading) }()
		// Renew until a renewal has failed for longer than two thirds of
		// the lease: another process may then take it.
		last := time.Now()
		for leading.Err() == nil {
			select {
			case <-leading.Done():
			case <-time.After(retry):
			}
			if e.acquire(ctx) {
				last = time.Now()
			} else if time.Since(last) > e.duration*2/3 {
				e.log.Warn("lost the lease", "lease", e.name)
				stop()
			}
		}
		stop()
		<-done
	}
	e.release()
}

// acquire takes or renews the lease; it reports whether this process
// holds it.
func (e *election) acquire(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, e.duration/3)
	defer cancel()
	now := metav1.NowMicro().UTC().Format("2006-01-02T15:04:05.000000Z07:00")
	seconds := int64(e.duration / time.Second)
	if seconds < 1 {
		seconds = 1
	}
	lease, err := e.client.Get(ctx, e.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
			"spec": map[string]any{"holderIdentity": e.identity, "leaseDurationSeconds": seconds, "acquireTime": now, "renewTime": now},
		}}
		obj.SetName(e.name)
		_, err = e.client.Create(ctx, obj, metav1.CreateOptions{})
		return err == nil
	}
	if err != nil {
		return false
	}
	holder, _, _ := unstructured.NestedString(lease.Object, "spec", "holderIdentity")
	renewed, _, _ := unstructured.NestedString(lease.Object, "spec", "renewTime")
	held, _, _ := unstructured.NestedInt64(lease.Object, "spec", "leaseDurationSeconds")
	if record := fmt.Sprint(holder, " ", renewed, " ", held); record != e.seen {
		e.seen, e.seenAt = record, time.Now()
	}
	if holder != e.identity && holder != "" && time.Since(e.seenAt) < time.Duration(held)*time.Second {
		return false // another's, and renewed within its duration
	}
	spec := map[string]any{"holderIdentity": e.identity, "leaseDurationSeconds": seconds, "renewTime": now}
	if holder != e.identity {
		spec["acquireTime"] = now
		n, _, _ := unstructured.NestedInt64(lease.Object, "spec", "leaseTransitions")
		spec["leaseTransitions"] = n + 1
	} else if a, ok, _ := unstructured.NestedString(lease.Object, "spec", "acquireTime"); ok {
		spec["acquireTime"] = a
	}
	lease.Object["spec"] = spec
	_, err = e.client.Update(ctx, lease, metav1.UpdateOptions{}) // its resourceVersion: one writer wins
	return err == nil
}

// release gives the lease up, if this process holds it, so that another
// takes it at once.
func (e *election) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	lease, err := e.client.Get(ctx, e.name, metav1.GetOptions{})
	if err != nil {
		return
	}
	if holder, _, _ := unstructured.NestedString(lease.Object, "spec", "holderIdentity"); holder != e.identity {
		return
	}
	unstructured.SetNestedField(lease.Object, "", "spec", "holderIdentity")
	e.client.Update(ctx, lease, metav1.UpdateOptions{})
}
