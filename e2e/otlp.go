package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is one span an OTLP receiver got, flattened.
type Span struct {
	Service             string // the resource's service.name
	Name                string
	TraceID, ID, Parent string
	Kind                tracepb.Span_SpanKind
	Attrs               map[string]string
	Failed              bool // status error
	StatusMessage       string
	Start, End          time.Time
}

func (s Span) String() string {
	return fmt.Sprintf("%s %q %s parent %s %v", s.Service, s.Name, s.ID, s.Parent, s.Attrs)
}

// Receiver is an OTLP/gRPC trace receiver, as a collector runs one: the
// roles export their spans to it.
type Receiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []Span
}

// ReceiveOTLP serves an OTLP trace receiver on lis until the test ends.
func ReceiveOTLP(t testing.TB, lis net.Listener) *Receiver {
	r := &Receiver{}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, r)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return r
}

// Export implements the OTLP trace service.
func (r *Receiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := attrs(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.spans = append(r.spans, Span{Service: service, Name: s.GetName(), Kind: s.GetKind(),
					TraceID: hex.EncodeToString(s.GetTraceId()), ID: hex.EncodeToString(s.GetSpanId()), Parent: hex.EncodeToString(s.GetParentSpanId()),
					Attrs: attrs(s.GetAttributes()), Failed: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR, StatusMessage: s.GetStatus().GetMessage(),
					Start: time.Unix(0, int64(s.GetStartTimeUnixNano())), End: time.Unix(0, int64(s.GetEndTimeUnixNano()))})
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func attrs(kvs []*commonpb.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			out[kv.GetKey()] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			out[kv.GetKey()] = strconv.FormatInt(v.IntValue, 10)
		case *commonpb.AnyValue_BoolValue:
			out[kv.GetKey()] = strconv.FormatBool(v.BoolValue)
		default:
			out[kv.GetKey()] = fmt.Sprint(kv.GetValue())
		}
	}
	return out
}

// WaitFor polls the spans received until match finds what it wants in
// them (ok), for up to d; it returns match's last result.
func (r *Receiver) WaitFor(d time.Duration, match func(spans []Span) bool) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		r.mu.Lock()
		spans := append([]Span(nil), r.spans...)
		r.mu.Unlock()
		if match(spans) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// Trace is the spans of trace id.
func (r *Receiver) Trace(id string) []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Span
	for _, s := range r.spans {
		if s.TraceID == id {
			out = append(out, s)
		}
	}
	return out
}
