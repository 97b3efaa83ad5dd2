"""Static checks of the Slicer module files (no Slicer application needed).

* every widget the module code uses (``self.ui.X`` and the names in ``SCALAR_WIDGETS``) exists as
  an objectName in ``CPCSAM/Resources/UI/CPCSAM.ui``, with a class that fits its use;
* the panel's initial values are the module's (the paper's) defaults;
* the .ui declares its custom widgets and gives the scene to every MRML widget;
* the CMake files name files that exist and install the whole engine package;
* the module sources compile.
"""

from __future__ import annotations

import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE = Path("CPCSAM") / "CPCSAM.py"
UI = Path("CPCSAM") / "Resources" / "UI" / "CPCSAM.ui"
EFFECT = Path("SegmentEditorCPCSAM") / "SegmentEditorCPCSAMLib" / "SegmentEditorEffect.py"


@pytest.fixture(scope="module")
def ui_tree(repo_root):
    return ET.parse(repo_root / UI)


@pytest.fixture(scope="module")
def widgets(ui_tree):
    """objectName -> class of every widget in the .ui."""
    return {w.get("name"): w.get("class") for w in ui_tree.iter("widget")}


@pytest.fixture(scope="module")
def module_source(repo_root):
    return (repo_root / MODULE).read_text(encoding="utf-8")


def _module_constant(source: str, name: str):
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {MODULE}")


def _property(widget_element, name):
    for prop in widget_element.findall("property"):
        if prop.get("name") == name:
            value = list(prop)[0]
            return value.text
    return None


def test_every_ui_attribute_used_by_the_module_exists(module_source, widgets):
    used = set(re.findall(r"self\.ui\.(\w+)", module_source))
    assert len(used) >= 15  # the regex finds the names (sanity check of the check itself)
    missing = sorted(used - set(widgets))
    assert not missing, f"widgets used in {MODULE} but absent from {UI}: {missing}"


def test_scalar_widgets_exist_with_a_fitting_class(module_source, widgets):
    expected = {"combo": {"QComboBox"}, "int": {"QSpinBox", "ctkSliderWidget"},
                "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget"},
                "bool": {"QCheckBox"}, "path": {"ctkPathLineEdit"}}
    table = _module_constant(module_source, "SCALAR_WIDGETS")
    for name, parameter, kind in table:
        assert name in widgets, f"{name} ({parameter}) is not in the .ui"
        assert widgets[name] in expected[kind], f"{name} is a {widgets[name]}, used as {kind}"
    parameters = {p for _, p, _ in table}
    assert parameters <= set(_module_constant(module_source, "DEFAULT_PARAMETERS"))


def test_panel_initial_values_are_the_defaults(module_source, ui_tree):
    defaults = _module_constant(module_source, "DEFAULT_PARAMETERS")
    by_name = {w.get("name"): w for w in ui_tree.iter("widget")}
    for name, parameter, kind in _module_constant(module_source, "SCALAR_WIDGETS"):
        element = by_name[name]
        if kind == "int":
            assert int(_property(element, "value")) == defaults[parameter], name
        elif kind == "float":
            assert float(_property(element, "value")) == pytest.approx(defaults[parameter]), name
        elif kind == "combo":
            items = [list(item.find("property"))[0].text for item in element.findall("item")]
            assert items[0] == defaults[parameter], name
        elif kind == "bool":
            assert (_property(element, "checked") == "true") == defaults[parameter], name
    # the paper's settings
    assert (defaults["LearningRate"], defaults["LambdaCross"], defaults["LambdaConsistency"],
            defaults["LoraRank"], defaults["Backbone"]) == (0.001, 0.4, 0.05, 4, "LiteMedSAM")
    backbones = [list(i.find("property"))[0].text for i in by_name["backboneComboBox"].findall("item")]
    assert backbones == ["LiteMedSAM", "SAM ViT-B", "SAM ViT-L", "SAM ViT-H"]
    devices = [list(i.find("property"))[0].text for i in by_name["deviceComboBox"].findall("item")]
    assert devices == ["auto", "CPU", "GPU"]


def test_panel_has_the_required_controls(widgets):
    for name, cls in [("trainButton", "QPushButton"), ("progressBar", "QProgressBar"),
                      ("logTextEdit", "QPlainTextEdit"), ("lossLabel", "QLabel"), ("diceLabel", "QLabel"),
                      ("advancedCollapsibleButton", "ctkCollapsibleButton"),
                      ("unlabeledVolumesSelector", "qMRMLCheckableNodeComboBox"),
                      ("labeledPairsTable", "QTableWidget"), ("labeledVolumeSelector", "qMRMLNodeComboBox"),
                      ("labeledSegmentationSelector", "qMRMLNodeComboBox"),
                      ("applyVolumesSelector", "qMRMLCheckableNodeComboBox"),
                      ("modelPathLineEdit", "ctkPathLineEdit"), ("outputDirectoryPathLineEdit", "ctkPathLineEdit"),
                      ("samCheckpointPathLineEdit", "ctkPathLineEdit"),
                      ("outputSegmentationSelector", "qMRMLNodeComboBox"),
                      ("show3DButton", "qMRMLSegmentationShow3DButton"), ("maxMinutesSpinBox", "QDoubleSpinBox"),
                      ("openJobFolderButton", "QPushButton")]:
        assert widgets.get(name) == cls, f"{name}: {widgets.get(name)} != {cls}"
    assert widgets["CPCSAM"] == "qMRMLWidget"


def test_ui_declares_custom_widgets_and_scene_connections(ui_tree, widgets):
    root = ui_tree.getroot()
    assert root.get("version") == "4.0" and root.find("class").text == "CPCSAM"
    declared = {cw.find("class").text for cw in root.iter("customwidget")}
    qt_classes = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QCheckBox",
                  "QListWidget", "QTableWidget", "QProgressBar", "QPlainTextEdit"}
    for name, cls in widgets.items():
        assert cls in qt_classes or cls in declared, f"{name}: class {cls} is neither Qt nor declared"
    # qMRMLSegmentationShow3DButton is a ctkMenuButton without setMRMLScene
    mrml = {n for n, c in widgets.items() if c.startswith("qMRML")
            and c not in ("qMRMLWidget", "qMRMLSegmentationShow3DButton")}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and mrml <= connected, f"MRML widgets without the scene: {sorted(mrml - connected)}"
    names = [w.get("name") for w in ui_tree.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName"


def test_module_texts(module_source):
    assert 'self.parent.categories = ["Segmentation"]' in module_source
    assert "Miao J, Chen C, Zhang K, Chuai J, Li Q, Heng PA" in module_source
    assert "Cross Prompting Consistency with Segment Anything Model for Semi-supervised Medical Image" in module_source
    assert "MICCAI 2024" in module_source
    for cls in ("class CPCSAM(ScriptedLoadableModule)", "class CPCSAMWidget(ScriptedLoadableModuleWidget",
                "class CPCSAMLogic(ScriptedLoadableModuleLogic)", "class CPCSAMTest(ScriptedLoadableModuleTest)"):
        assert cls in module_source


def test_sources_compile(repo_root, tmp_path):
    for path in [MODULE, EFFECT, Path("SegmentEditorCPCSAM") / "SegmentEditorCPCSAM.py",
                 Path("SegmentEditorCPCSAM") / "SegmentEditorCPCSAMLib" / "__init__.py"]:
        py_compile.compile(str(repo_root / path), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_effect_uses_the_contract(repo_root):
    source = (repo_root / EFFECT).read_text(encoding="utf-8")
    for needle in ("predict_slice_with_points", "saveStateForUndo()", "modifySelectedSegmentByLabelmap",
                   "GetShiftKey()", "LeftButtonPressEvent", "effect_logic.write_slices_to_segment",
                   "effect_logic.propagation_steps", "effect_logic.locate_click",
                   "confirmCurrentSegmentVisible()", "ModificationModeRemove", "ModificationModeAdd",
                   "def processInteractionEvents(self, callerInteractor, eventId, viewWidget)",
                   # box models: a drag with a rubber band (Slicer's Draw-effect calls), boxes on the slice
                   "predict_slice_with_box", "predict_slice(", "effect_logic.locate_drag",
                   "effect_logic.box_from_corners", "effect_logic.box_at_click", "effect_logic.box_prompt",
                   "cpcsamMrml.model_prompt_type", "LeftButtonReleaseEvent", "MouseMoveEvent",
                   "scriptedEffect.addActor2D(viewWidget, self.actor)",
                   "scriptedEffect.removeActor2D(self.viewWidget, self.actor)", "sliceView().scheduleRender()",
                   "self.scriptedEffect.NotConfirmed", "self.scriptedEffect.ConfirmedWithDialog"):
        assert needle in source, needle
    assert "ModificationModeSet" not in source  # Set clears the whole segment first
    assert "sys.path" not in source.replace("on sys.path", "")  # one place only: CPCSAM.py
    module = (repo_root / "SegmentEditorCPCSAM" / "SegmentEditorCPCSAM.py").read_text(encoding="utf-8")
    assert 'slicer.app.connect("startupCompleted()", self.registerEditorEffect)' in module
    assert "qSlicerSegmentEditorScriptedEffect" in module


def _cmake_list(text: str, variable: str):
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, variable
    return match.group(1).split()


def test_cmake_files(repo_root):
    top = (repo_root / "CMakeLists.txt").read_text()
    for needle in ("EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"', "EXTENSION_CONTRIBUTORS",
                   "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS",
                   'EXTENSION_DEPENDS "PyTorch"', "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "add_subdirectory(CPCSAM)", "add_subdirectory(SegmentEditorCPCSAM)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, needle
    assert (repo_root / "Resources" / "Icons" / "CPCSAM.png").is_file()
    for module in ("CPCSAM", "SegmentEditorCPCSAM"):
        text = (repo_root / module / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
        for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
            for entry in _cmake_list(text, variable):
                path = repo_root / module / entry.replace("${MODULE_NAME}", module)
                assert path.is_file(), f"{module}/CMakeLists.txt names a missing file: {entry}"
    # the engine's install rules are run with cmake in test_cmake_install.py


def test_icons_are_real_pngs(repo_root):
    import SimpleITK as sitk

    for path in ("Resources/Icons/CPCSAM.png", "CPCSAM/Resources/Icons/CPCSAM.png",
                 "SegmentEditorCPCSAM/Resources/Icons/SegmentEditorCPCSAM.png"):
        image = sitk.ReadImage(str(repo_root / path))
        assert image.GetSize() == (128, 128), path
        assert image.GetNumberOfComponentsPerPixel() in (3, 4)


def _selector_accepts(element, node) -> bool:
    """qMRMLSortFilterProxyModel's node-type rule (Libs/MRML/Widgets/qMRMLSortFilterProxyModel.cxx):
    with showChildNodeTypes false a node's class must equal one of nodeTypes; otherwise IsA, minus
    hideChildNodeTypes (default of showChildNodeTypes: true)."""
    types = [e.text for e in element.find("property[@name='nodeTypes']").iter("string")]
    show_child = _property(element, "showChildNodeTypes") != "false"
    hidden = [e.text for e in element.findall("property[@name='hideChildNodeTypes']//string")]
    for node_type in types:
        if not node.IsA(node_type):
            continue
        if not show_child and node.GetClassName() != node_type:
            continue
        if show_child and any(node.IsA(h) for h in hidden):
            return False
        return True
    return False


def test_volume_selectors_offer_rgb_volumes_and_no_labelmaps(ui_tree):
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    nodes = {cls: scene.AddNewNodeByClass(cls) for cls in (
        "vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode", "vtkMRMLLabelMapVolumeNode",
        "vtkMRMLDiffusionWeightedVolumeNode", "vtkMRMLSegmentationNode")}
    by_name = {w.get("name"): w for w in ui_tree.iter("widget")}
    for name in ("labeledVolumeSelector", "unlabeledVolumesSelector", "applyVolumesSelector"):
        accepted = {cls for cls, node in nodes.items() if _selector_accepts(by_name[name], node)}
        assert accepted == {"vtkMRMLScalarVolumeNode", "vtkMRMLVectorVolumeNode"}, (name, accepted)
    scene.Clear(1)


def test_extension_urls_name_files_of_the_repository(repo_root):
    """The icon and screenshot URLs point at files that exist here (no invented pictures)."""
    text = (repo_root / "CMakeLists.txt").read_text(encoding="utf-8")
    variables = dict(re.findall(r'set\((\w+) "([^"]*)"\)', text))
    raw = variables["CPCSAM_RAW_FILES"]
    assert raw.startswith("https://raw.githubusercontent.com/")
    for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in variables[name].split():
            url = url.replace("${CPCSAM_RAW_FILES}", raw)
            assert url.startswith(raw + "/"), url
            path = repo_root / url[len(raw) + 1:]
            assert path.is_file(), f"{name} names a file that does not exist: {path}"
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert variables["EXTENSION_HOMEPAGE"].replace("${CPCSAM_REPOSITORY}", variables["CPCSAM_REPOSITORY"]) \
        .startswith(variables["CPCSAM_REPOSITORY"])
    assert (repo_root / "docs" / "SLICER.md").is_file()
    assert "placeholder" not in text.lower() and "example.com" not in text


def _undefined_names(source: str):
    """Names a module loads but never defines or imports (module-level view, like pyflakes' F821)."""
    import ast
    import builtins

    tree = ast.parse(source)
    defined = set(dir(builtins)) | {"__file__", "__name__"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            defined.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return sorted(used - defined)


def test_slicer_files_use_no_undefined_name(repo_root):
    """The Qt files cannot run here: at least every name they use must exist."""
    for path in [MODULE, EFFECT, Path("SegmentEditorCPCSAM") / "SegmentEditorCPCSAM.py"]:
        assert _undefined_names((repo_root / path).read_text(encoding="utf-8")) == [], path
    assert _undefined_names("x = UNDEFINED_ROLE\n") == ["UNDEFINED_ROLE"]
