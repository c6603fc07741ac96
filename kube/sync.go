package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/proto"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// Sync keeps a domain's registry and its Kubernetes objects in step: it
// stores what the NetworkService objects say (and removes services that no
// object defines), reports in each object's status whether it was taken,
// its rules and its endpoints, and writes a NetworkServiceEndpoint object
// in Namespace for each registered endpoint. One process of the domain's
// proxies does it at a time (a Lease in Namespace); the others wait.
type Sync struct {
	Client dynamic.Interface
	Store  *registry.Store
	// Namespace is vwire's own: its lease and endpoint objects.
	Namespace string
	// Identity names this process in the lease.
	Identity string
	Log      *slog.Logger
	// LeaseDuration is how long a leader that stopped renewing keeps the
	// lease (default 15 s, as client-go's leader election): how long the sync may stand still.
	LeaseDuration time.Duration
}

// Run syncs whenever this process leads, until ctx ends.
func (s *Sync) Run(ctx context.Context) error {
	lease := s.LeaseDuration
	if lease == 0 {
		lease = 15 * time.Second
	}
	e := &election{client: s.Client.Resource(leasesResource).Namespace(s.Namespace), name: "vwire-sync", identity: s.Identity, duration: lease, log: s.Log}
	e.run(ctx, func(ctx context.Context) {
		s.Log.Info("syncing the domain with its Kubernetes objects", "namespace", s.Namespace)
		for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
			err := s.lead(ctx)
			if ctx.Err() != nil {
				return
			}
			s.Log.Error("syncing with Kubernetes stopped; starting again", "err", err, "in", wait)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	})
	return nil
}

// lead syncs until ctx ends.
func (s *Sync) lead(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx) // the informers and the mirror end with it
	defer cancel()
	services := informer(s.Client.Resource(ServicesResource), "")
	endpoints := informer(s.Client.Resource(EndpointsResource).Namespace(s.Namespace), managedByLabel+"="+ManagedBy)
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueue := func(obj any) {
		if u, ok := obj.(*unstructured.Unstructured); ok {
			queue.Add(u.GetName())
		} else if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			if u, ok := d.Obj.(*unstructured.Unstructured); ok {
				queue.Add(u.GetName())
			}
		}
	}
	if _, err := services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	go services.RunWithContext(ctx)
	go endpoints.RunWithContext(ctx)
	if !cache.WaitForCacheSync(ctx.Done(), services.HasSynced, endpoints.HasSynced) {
		return ctx.Err()
	}
	// Services stored that no object defines go (they were deleted while
	// no process led).
	stored, err := s.Store.ListServices(ctx)
	if err != nil {
		return err
	}
	for _, svc := range stored {
		queue.Add(svc.GetName())
	}
	r := &reconciler{Sync: s, services: services.GetIndexer(), endpoints: endpoints.GetIndexer(), queue: queue}
	go r.mirror(ctx)
	go func() { <-ctx.Done(); queue.ShutDown() }()
	for {
		name, quit := queue.Get()
		if quit {
			return ctx.Err()
		}
		if err := r.service(ctx, name); err != nil && ctx.Err() == nil {
			s.Log.Warn("syncing a network service failed; retrying", "service", name, "err", err)
			queue.AddRateLimited(name)
		} else {
			queue.Forget(name)
		}
		queue.Done(name)
	}
}

type reconciler struct {
	*Sync
	services, endpoints cache.Indexer
	queue               workqueue.TypedRateLimitingInterface[string]
}

// informer lists and watches the objects of client (with labels matching
// selector, if any). (client-go's dynamicinformer would do as well, but it
// links every typed informer into the binary: 15 MB.)
func informer(client dynamic.ResourceInterface, selector string) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = selector
			return client.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = selector
			return client.Watch(ctx, o)
		},
	}
	return cache.NewSharedIndexInformer(lw, &unstructured.Unstructured{}, 10*time.Minute, cache.Indexers{})
}

// service makes the stored network service name what its object says.
func (r *reconciler) service(ctx context.Context, name string) error {
	all := r.services.List()
	var objs []*unstructured.Unstructured
	for _, o := range all {
		if u := o.(*unstructured.Unstructured); u.GetName() == name && u.GetDeletionTimestamp() == nil {
			objs = append(objs, u)
		}
	}
	if len(objs) == 0 {
		err := r.Store.DeleteService(ctx, name)
		switch {
		case err == nil:
			r.Log.Info("network service deleted: its object is gone", "service", name)
		case !errors.Is(err, registry.ErrNotFound):
			return err
		}
		return nil
	}
	// One name, one service: the oldest object defines it.
	sort.Slice(objs, func(i, j int) bool {
		ti, tj := objs[i].GetCreationTimestamp(), objs[j].GetCreationTimestamp()
		if !ti.Equal(&tj) {
			return ti.Before(&tj)
		}
		return objs[i].GetNamespace() < objs[j].GetNamespace()
	})
	winner := objs[0]
	for _, o := range objs[1:] {
		if err := r.status(ctx, o, nil, 0, "Conflict", fmt.Sprintf("network service %q is defined by %s/%s already: a domain has one service of a name", name, winner.GetNamespace(), name)); err != nil {
			return err
		}
	}
	svc, err := serviceOf(winner)
	if err != nil {
		// What is stored stays: a bad change does not take the service away.
		r.Log.Warn("a NetworkService object is refused", "service", name, "namespace", winner.GetNamespace(), "err", err)
		return r.status(ctx, winner, nil, 0, "Invalid", err.Error())
	}
	if have, err := r.Store.GetService(ctx, name); err != nil || !proto.Equal(have, svc) {
		if err := r.Store.PutService(ctx, svc); err != nil {
			return err
		}
		r.Log.Info("network service stored from its object", "service", name, "namespace", winner.GetNamespace())
	}
	eps, err := r.Store.ListEndpoints(ctx, name)
	if err != nil {
		return err
	}
	return r.status(ctx, winner, svc, len(eps), "Stored", "vwire stores this network service")
}

// status sets obj's status: its rules and endpoints when svc was taken, and
// the Accepted condition with reason and message.
func (r *reconciler) status(ctx context.Context, obj *unstructured.Unstructured, svc *registrypb.NetworkService, endpoints int, reason, message string) error {
	accepted := "False"
	if svc != nil {
		accepted = "True"
	}
	cond := map[string]any{"type": "Accepted", "status": accepted, "reason": reason, "message": message}
	old, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	cond["lastTransitionTime"] = time.Now().UTC().Format(time.RFC3339)
	for _, c := range old {
		if m, ok := c.(map[string]any); ok && m["type"] == "Accepted" && m["status"] == accepted && m["reason"] == reason {
			cond["lastTransitionTime"] = m["lastTransitionTime"]
		}
	}
	status := map[string]any{"conditions": []any{cond}}
	if svc != nil {
		status["rules"] = int64(len(svc.GetMatches()))
		status["endpoints"] = int64(endpoints)
	}
	if fmt.Sprint(obj.Object["status"]) == fmt.Sprint(status) {
		return nil
	}
	out := obj.DeepCopy()
	out.Object["status"] = status
	_, err := r.Client.Resource(ServicesResource).Namespace(obj.GetNamespace()).UpdateStatus(ctx, out, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		r.queue.AddRateLimited(obj.GetName()) // the informer brings the newer one
		return nil
	}
	return err
}

// mirror writes a NetworkServiceEndpoint object for each registered
// endpoint, and removes those of endpoints gone, until ctx ends; each
// change has the services of the endpoint count their endpoints again.
func (r *reconciler) mirror(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.Store.FollowEndpoints(ctx, func(all []*registrypb.Endpoint) {
			keep := map[string]bool{}
			for _, ep := range all {
				keep[ep.GetName()] = true
				r.write(ctx, ep.GetName(), ep)
			}
			for _, o := range r.endpoints.List() {
				if u := o.(*unstructured.Unstructured); !keep[u.GetName()] {
					r.write(ctx, u.GetName(), nil)
				}
			}
		}, func(name string, ep *registrypb.Endpoint) { r.write(ctx, name, ep) })
		if ctx.Err() == nil {
			r.Log.Warn("following the registry's endpoints failed; following again", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// write makes the object of endpoint name show ep (nil: removes it).
func (r *reconciler) write(ctx context.Context, name string, ep *registrypb.Endpoint) {
	client := r.Client.Resource(EndpointsResource).Namespace(r.Namespace)
	var have *unstructured.Unstructured
	if o, ok, _ := r.endpoints.GetByKey(r.Namespace + "/" + name); ok {
		have = o.(*unstructured.Unstructured)
	}
	// The services whose endpoint counts change.
	var services []string
	if have != nil {
		names, _, _ := unstructured.NestedStringSlice(have.Object, "spec", "network_service_names")
		services = names
	}
	var err error
	switch {
	case ep == nil && have != nil:
		err = client.Delete(ctx, name, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			err = nil
		}
	case ep == nil:
	default:
		services = append(services, ep.GetNetworkServiceNames()...)
		want := endpointObject(ep, r.Namespace)
		switch {
		case have == nil:
			_, err = client.Create(ctx, want, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) { // the informer is behind
				err = nil
			}
		case !sameEndpoint(have, want):
			want.SetResourceVersion(have.GetResourceVersion())
			_, err = client.Update(ctx, want, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) {
				err = nil // the informer brings the newer one; the next change writes again
			}
		}
	}
	if err != nil {
		r.Log.Warn("writing a NetworkServiceEndpoint object failed", "endpoint", name, "err", err)
	}
	slices.Sort(services)
	for _, svc := range slices.Compact(services) {
		if n, err := registry.ParseName(svc); err == nil && n.Domain == "" {
			r.queue.Add(svc)
		}
	}
}
