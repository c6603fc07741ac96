package registry

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/registry/registrypb"
)

// mirror is an in-memory copy of a domain's services and endpoint index,
// kept by one etcd watch, that finds read instead of etcd: a find is then a
// map look-up and the match rules. It lags etcd by the watch's delivery
// time; the Store makes its own writes visible to its own finds by waiting
// for the mirror to reach their revision (or reading etcd).
type mirror struct {
	mu       sync.RWMutex
	rev      int64 // the etcd revision the copy reflects; 0 before the first load
	services map[string]*registrypb.NetworkService
	index    map[string]map[string]*registrypb.Endpoint // service → name → endpoint
	expires  map[string]time.Time                       // endpoint → when its registration lapses (zero: never)
	advanced chan struct{}                              // closed when rev moves
}

// lastWrite is the highest revision a Store wrote; finds wait for the
// mirror to reach it.
type lastWrite struct{ atomic.Int64 }

func (w *lastWrite) saw(rev int64) {
	for {
		cur := w.Load()
		if rev <= cur || w.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// Mirror keeps the store's in-memory copy until ctx ends (the returned
// channel closes then); finds use it once it has loaded. Without Mirror,
// finds read etcd.
func (s *Store) Mirror(ctx context.Context) <-chan struct{} {
	m := &mirror{advanced: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := s.follow(ctx, m); err != nil && ctx.Err() == nil {
				select { // etcd is away or compacted past us: load again
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
		s.mirror.Store(nil)
	}()
	return done
}

// follow loads the copy and applies the watch to it until an error.
func (s *Store) follow(ctx context.Context, m *mirror) error {
	resp, err := s.cli.Get(ctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.services, m.index, m.expires = map[string]*registrypb.NetworkService{}, map[string]map[string]*registrypb.Endpoint{}, map[string]time.Time{}
	for _, kv := range resp.Kvs {
		m.apply(s, string(kv.Key), kv.Value, false)
	}
	m.advanceLocked(resp.Header.Revision)
	m.mu.Unlock()
	s.mirror.Store(m)
	defer s.mirror.Store(nil) // until loaded again
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.cli.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		m.mu.Lock()
		for _, ev := range wr.Events {
			m.apply(s, string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
		}
		m.advanceLocked(wr.Header.Revision)
		m.mu.Unlock()
	}
	return ctx.Err()
}

// apply puts or deletes one key of the domain's prefix in the copy.
func (m *mirror) apply(s *Store, key string, value []byte, deleted bool) {
	rest := strings.TrimPrefix(key, s.prefix)
	switch {
	case strings.HasPrefix(rest, "services/"):
		name := strings.TrimPrefix(rest, "services/")
		if deleted {
			delete(m.services, name)
		} else if svc, err := unmarshal[registrypb.NetworkService](value); err == nil {
			m.services[name] = svc
		}
	case strings.HasPrefix(rest, "endpoints/"):
		name := strings.TrimPrefix(rest, "endpoints/")
		if deleted {
			// A deletion at or past the registration's expiry is its lease's.
			if at, ok := m.expires[name]; ok && !at.IsZero() && !time.Now().Add(time.Second).Before(at) {
				s.lapsed.Add(1)
			}
			delete(m.expires, name)
		} else if ep, err := unmarshal[registrypb.Endpoint](value); err == nil {
			m.expires[name] = time.Time{}
			if ep.GetExpiresAt() != nil {
				m.expires[name] = ep.GetExpiresAt().AsTime()
			}
		}
	case strings.HasPrefix(rest, "index/"):
		svc, name, _ := strings.Cut(strings.TrimPrefix(rest, "index/"), "/")
		if deleted {
			delete(m.index[svc], name)
			return
		}
		ep, err := unmarshal[registrypb.Endpoint](value)
		if err != nil {
			return
		}
		if m.index[svc] == nil {
			m.index[svc] = map[string]*registrypb.Endpoint{}
		}
		m.index[svc][name] = ep
	}
}

func (m *mirror) advanceLocked(rev int64) {
	if rev > m.rev {
		m.rev = rev
		close(m.advanced)
		m.advanced = make(chan struct{})
	}
}

// Counts are the domain's services and endpoints, from the in-memory copy
// (ok false while there is none: see Mirror).
func (s *Store) Counts() (services, endpoints int, ok bool) {
	m := s.mirror.Load()
	if m == nil {
		return 0, 0, false
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.services), len(m.expires), true
}

// snapshot reads service (and with endpoints its endpoints) once the copy
// reflects revision want; ok is false if it does not within wait.
func (m *mirror) snapshot(ctx context.Context, service string, endpoints bool, want int64, wait time.Duration) (svc *registrypb.NetworkService, eps []*registrypb.Endpoint, ok bool) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for {
		m.mu.RLock()
		if m.rev >= want {
			defer m.mu.RUnlock()
			svc = m.services[service]
			if endpoints {
				for _, ep := range m.index[service] {
					eps = append(eps, ep)
				}
			}
			// Callers may keep what they get; the copy changes under them.
			if svc != nil {
				svc = proto.Clone(svc).(*registrypb.NetworkService)
			}
			return svc, eps, true
		}
		advanced := m.advanced
		m.mu.RUnlock()
		select {
		case <-advanced:
		case <-deadline.C:
			return nil, nil, false
		case <-ctx.Done():
			return nil, nil, false
		}
	}
}
