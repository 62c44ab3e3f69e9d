// kubevirt-manifests prints, as multi-document YAML, objects that KubeVirt v1.9.0's
// virt-operator would create, using KubeVirt's own generator code
// (kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/...).
//
//	kubevirt-manifests -type crds                 # 20 CRDs: KubeVirt + the 19 of install.GenerateCurrentInstallStrategy
//	kubevirt-manifests -type rbac -namespace kubevirt  # SAs, (Cluster)Roles, bindings: cluster + virt-api + virt-controller (+handler)
//	kubevirt-manifests -type webhooks -namespace kubevirt  # virt-api Validating/Mutating webhook configurations (service refs)
//	kubevirt-manifests -type kv-cr -namespace kubevirt     # a KubeVirt CR
//	kubevirt-manifests -type services -namespace kubevirt  # virt-api Service
//	kubevirt-manifests -type apiservices -namespace kubevirt
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	extv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	virtv1 "kubevirt.io/api/core/v1"

	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/components"
	"kubevirt.io/kubevirt/pkg/virt-operator/resource/generate/rbac"
)

// NewKubeVirtCrd (installed with virt-operator's own manifest: tools/resource-generator -type kv),
// then the same list, same order as pkg/virt-operator/resource/generate/install/strategy.go
// GenerateCurrentInstallStrategy.
var crdFuncs = []func() (*extv1.CustomResourceDefinition, error){
	components.NewKubeVirtCrd,
	components.NewVirtualMachineInstanceCrd, components.NewPresetCrd, components.NewReplicaSetCrd,
	components.NewVirtualMachineCrd, components.NewVirtualMachineInstanceMigrationCrd,
	components.NewVirtualMachineSnapshotCrd, components.NewVirtualMachineSnapshotContentCrd,
	components.NewVirtualMachineRestoreCrd, components.NewVirtualMachineInstancetypeCrd,
	components.NewVirtualMachineClusterInstancetypeCrd, components.NewVirtualMachinePoolCrd,
	components.NewMigrationPolicyCrd, components.NewVirtualMachinePreferenceCrd,
	components.NewVirtualMachineClusterPreferenceCrd, components.NewVirtualMachineExportCrd,
	components.NewVirtualMachineCloneCrd, components.NewVirtualMachineBackupCrd,
	components.NewVirtualMachineBackupTrackerCrd,
	components.NewPluginCrd,
}

// out writes one YAML document. Not kubevirt.io/kubevirt/tools/util.MarshallObject: that one
// strips quotes for its Go-template manifests and so emits invalid YAML for descriptions
// ending in a double quote (e.g. DataVolumeContentType in the VM CRD).
func out(obj interface{}) {
	j, err := json.Marshal(obj)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var u unstructured.Unstructured
	if err := json.Unmarshal(j, &u.Object); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	if u.GetKind() == "CustomResourceDefinition" {
		unstructured.RemoveNestedField(u.Object, "status")
	}
	y, err := yaml.Marshal(u.Object)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Stdout.WriteString("---\n")
	os.Stdout.Write(y)
}

func outAll(objs []runtime.Object) {
	for _, o := range objs {
		out(o)
	}
}

func main() {
	typ := flag.String("type", "crds", "crds | rbac | webhooks | kv-cr | services | apiservices")
	ns := flag.String("namespace", "kubevirt", "KubeVirt install namespace")
	flag.Parse()
	switch *typ {
	case "crds":
		for _, f := range crdFuncs {
			crd, err := f()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			out(crd)
		}
	case "rbac":
		outAll(rbac.GetAllCluster())
		outAll(rbac.GetAllApiServer(*ns))
		outAll(rbac.GetAllController(*ns, true))
		outAll(rbac.GetAllHandler(*ns))
	case "webhooks":
		out(components.NewVirtAPIValidatingWebhookConfiguration(*ns))
		out(components.NewVirtAPIMutatingWebhookConfiguration(*ns))
	case "services":
		out(components.NewApiServerService(*ns))
	case "apiservices":
		for _, a := range components.NewVirtAPIAPIServices(*ns) {
			out(a)
		}
	case "kv-cr":
		out(&virtv1.KubeVirt{
			TypeMeta:   metav1.TypeMeta{APIVersion: virtv1.GroupVersion.String(), Kind: "KubeVirt"},
			ObjectMeta: metav1.ObjectMeta{Namespace: *ns, Name: "kubevirt"},
			Spec: virtv1.KubeVirtSpec{
				Configuration: virtv1.KubeVirtConfiguration{
					DeveloperConfiguration: &virtv1.DeveloperConfiguration{
						UseEmulation: true,
					},
				},
			},
		})
	default:
		fmt.Fprintf(os.Stderr, "unknown -type %q\n", *typ)
		os.Exit(2)
	}
}
