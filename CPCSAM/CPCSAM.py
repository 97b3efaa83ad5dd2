"""CPC-SAM: semi-supervised fine-tuning of SAM in 3D Slicer (module, panel, logic, self-test).

The widget is thin: it loads ``Resources/UI/CPCSAM.ui``, keeps the user's choices in the
module's parameter node and forwards to :class:`CPCSAMLogic`, which delegates to the Qt-free
Slicer side of the engine, ``CPCSAMLib.slicer`` (``mrml``: export/import of MRML nodes,
``pairs``: the labeled pairs, ``runs``: training and Apply as background runs, ``process``: the
engine's command line in a background process, ``install``: versions and Python dependencies).
Training and Apply run in separate processes (``PythonSlicer -m CPCSAMLib train|predict``) stepped
from a timer, so Slicer stays responsive and a crash or a cancel never takes the application down.

Console API (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("CPCSAM")
    model = logic.train(labeled=[(volumeNode, segmentationNode)], unlabeled=[otherVolume],
                        iterations=300, batch_size=4)         # TrainConfig names; blocks; model_best.pt
    segmentationNode = logic.apply(model, otherVolume)         # the volume's last result, or a new node
"""

import logging
import os
import sys
import tempfile
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin


def _engineParentDirectory():
    """Folder that holds the ``CPCSAMLib`` package: next to this file once the extension is built
    and installed (scripted-modules folder), or the repository's top level when the module is
    used from the source tree (Application Settings > Modules > Additional module paths)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(candidate, "CPCSAMLib", "__init__.py")):
            return candidate
    return here


ENGINE_PARENT_DIR = _engineParentDirectory()
if ENGINE_PARENT_DIR not in sys.path:
    sys.path.insert(0, ENGINE_PARENT_DIR)

from CPCSAMLib import InputError  # noqa: E402
from CPCSAMLib.slicer import install as cpcsamInstall  # noqa: E402
from CPCSAMLib.slicer import mrml as cpcsamMrml  # noqa: E402
from CPCSAMLib.slicer import pairs as cpcsamPairs  # noqa: E402
from CPCSAMLib.slicer import process as cpcsamProcess  # noqa: E402
from CPCSAMLib.slicer import runs as cpcsamRuns  # noqa: E402

#: Parameter node defaults of the panel (strings in the parameter node). Training options left
#: at the engine's default are not written to the job file; these are the panel's own choices.
DEFAULT_PARAMETERS = {
    "Backbone": "LiteMedSAM",
    "SAMCheckpoint": "",
    "Device": "auto",
    "Iterations": 10000,
    "BatchSize": 6,
    "LearningRate": 0.001,
    "LambdaCross": 0.4,
    "LambdaConsistency": 0.05,
    "LoraRank": 4,
    "ValidationEvery": 100,
    "Validation": False,
    "FastCPUMode": False,
    "MaxMinutes": 0,
    "OutputDirectory": "",
    "ModelPath": "",
}

#: Widgets that edit one scalar parameter: (widget name in the .ui, parameter, kind).
SCALAR_WIDGETS = (
    ("backboneComboBox", "Backbone", "combo"),
    ("samCheckpointPathLineEdit", "SAMCheckpoint", "path"),
    ("deviceComboBox", "Device", "combo"),
    ("iterationsSpinBox", "Iterations", "int"),
    ("batchSizeSpinBox", "BatchSize", "int"),
    ("learningRateSpinBox", "LearningRate", "float"),
    ("lambdaCrossSpinBox", "LambdaCross", "float"),
    ("lambdaConsistencySpinBox", "LambdaConsistency", "float"),
    ("loraRankSpinBox", "LoraRank", "int"),
    ("validationEverySpinBox", "ValidationEvery", "int"),
    ("validationCheckBox", "Validation", "bool"),
    ("fastCPUModeCheckBox", "FastCPUMode", "bool"),
    ("maxMinutesSpinBox", "MaxMinutes", "float"),
    ("outputDirectoryPathLineEdit", "OutputDirectory", "path"),
    ("modelPathLineEdit", "ModelPath", "path"),
)

#: Training widgets -> the engine's option (CPCSAMLib.config.TrainConfig field), read typed from
#: the widget (int, float, bool): the job file holds JSON numbers and booleans.
TRAIN_FIELDS = (
    ("iterationsSpinBox", "iterations", int),
    ("batchSizeSpinBox", "batch_size", int),
    ("learningRateSpinBox", "lr", float),
    ("lambdaCrossSpinBox", "lambda_cross", float),
    ("lambdaConsistencySpinBox", "lambda_consistency", float),
    ("loraRankSpinBox", "lora_rank", int),
    ("validationEverySpinBox", "val_every", int),
    ("fastCPUModeCheckBox", "freeze_encoder", bool),
)

UNLABELED_ROLE = "UnlabeledVolume"
APPLY_ROLE = "ApplyVolume"
CURRENT_VOLUME_ROLE = "LabeledVolume"
CURRENT_SEGMENTATION_ROLE = "LabeledSegmentation"


#
# CPCSAM
#

class CPCSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CPC-SAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["CPC-SAM for 3D Slicer contributors"]
        self.parent.helpText = """
Semi-supervised fine-tuning of the Segment Anything Model with <b>Cross Prompting Consistency</b>
(CPC-SAM): train on a few labeled volumes (a volume with its segmentation; the chosen segments
become the classes, named after them) and many unlabeled volumes, then segment new volumes
automatically (<b>Apply</b>) or from point clicks with the <b>CPC-SAM</b> Segment Editor effect.
Training runs in a background process; the progress bar, the latest losses and the validation
Dice follow it, and <b>Cancel</b> stops it after saving a checkpoint.
Backbones: LiteMedSAM (default, shipped) or SAM ViT-B/L/H (give the SAM checkpoint file).
Advanced settings default to the paper's: learning rate 1e-3, &lambda;1 = 0.4, &lambda;2 = 0.05,
LoRA rank 4.
"""
        self.parent.acknowledgementText = """
This module implements the method of: Miao J, Chen C, Zhang K, Chuai J, Li Q, Heng PA.
<i>Cross Prompting Consistency with Segment Anything Model for Semi-supervised Medical Image
Segmentation.</i> MICCAI 2024. It uses the Segment Anything Model (Kirillov et al., 2023) and
LiteMedSAM (Ma et al., MedSAM, 2024).
"""


#
# CPCSAMWidget
#

class CPCSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Every action is a call to :class:`CPCSAMLogic`."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self.run = None  #: the training or apply run in progress (CPCSAMLib.slicer.runs), or the last one
        self.timer = None

    # ------------------------------------------------------------------ setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CPCSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = CPCSAMLogic()
        self.timer = qt.QTimer()
        self.timer.setInterval(250)
        self.timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        signals = {"combo": "currentIndexChanged(int)", "int": "valueChanged(int)",
                   "float": "valueChanged(double)", "bool": "toggled(bool)",
                   "path": "currentPathChanged(QString)"}
        for name, _, kind in SCALAR_WIDGETS:
            getattr(self.ui, name).connect(signals[kind], self.updateParameterNodeFromGUI)

        self.ui.labeledVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLabeledVolumeChanged)
        self.ui.labeledSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onLabeledSegmentationChanged)
        self.ui.segmentsListWidget.connect("itemChanged(QListWidgetItem*)", self.updateButtonStates)
        self.ui.addPairButton.connect("clicked(bool)", self.onAddPair)
        self.ui.removePairButton.connect("clicked(bool)", self.onRemovePair)
        self.ui.labeledPairsTable.connect("itemSelectionChanged()", self.updateButtonStates)
        self.ui.unlabeledVolumesSelector.connect("checkedNodesChanged()", self.onUnlabeledVolumesChanged)
        self.ui.applyVolumesSelector.connect("checkedNodesChanged()", self.onApplyVolumesChanged)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.openJobFolderButton.connect("clicked(bool)", self.onOpenJobFolder)
        self.ui.backboneComboBox.connect("currentIndexChanged(int)", lambda *args: self.updateDependencyStatus())

        self.ui.labeledPairsTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.initializeParameterNode()
        self.updateDependencyStatus()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        if self.run is not None and not self.run.done:
            self.run.cancel()
            if self.run.process is not None:
                self.run.process.wait(timeout=15.0)  # the engine saves its checkpoint first
        if self.timer:
            self.timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.updateDependencyStatus()

    def exit(self):
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node
    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode:
            self.logic.setDefaultParameters(inputParameterNode)
        if self._parameterNode is not None and self.hasObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            p = self._parameterNode
            for name, parameter, kind in SCALAR_WIDGETS:
                widget = getattr(self.ui, name)
                value = p.GetParameter(parameter)
                wasBlocked = widget.blockSignals(True)
                if kind == "combo":
                    index = widget.findText(value)
                    widget.setCurrentIndex(max(index, 0))
                elif kind == "int":
                    widget.value = int(float(value or 0))
                elif kind == "float":
                    widget.value = float(value or 0)
                elif kind == "bool":
                    widget.checked = value == "true"
                elif kind == "path":
                    widget.currentPath = value
                widget.blockSignals(wasBlocked)
            self.ui.samCheckpointPathLineEdit.enabled = p.GetParameter("Backbone") != "LiteMedSAM"
            self.ui.labeledVolumeSelector.setCurrentNode(p.GetNodeReference(CURRENT_VOLUME_ROLE))
            self.ui.labeledSegmentationSelector.setCurrentNode(p.GetNodeReference(CURRENT_SEGMENTATION_ROLE))
            self._setCheckedNodes(self.ui.unlabeledVolumesSelector, self._referencedNodes(UNLABELED_ROLE))
            self._setCheckedNodes(self.ui.applyVolumesSelector, self._referencedNodes(APPLY_ROLE))
            self._updatePairsTable()
        finally:
            self._updatingGUIFromParameterNode = False
        self.updateButtonStates()

    def updateParameterNodeFromGUI(self, *args):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        wasModified = self._parameterNode.StartModify()
        for name, parameter, kind in SCALAR_WIDGETS:
            widget = getattr(self.ui, name)
            if kind == "combo":
                value = widget.currentText
            elif kind == "int":
                value = str(int(widget.value))
            elif kind == "float":
                value = repr(float(widget.value))
            elif kind == "bool":
                value = "true" if widget.checked else "false"
            else:
                value = widget.currentPath
            self._parameterNode.SetParameter(parameter, value)
        self._parameterNode.EndModify(wasModified)

    def _referencedNodes(self, role):
        p = self._parameterNode
        return [p.GetNthNodeReference(role, i) for i in range(p.GetNumberOfNodeReferences(role))]

    def _setReferencedNodes(self, role, nodes):
        p = self._parameterNode
        p.RemoveNodeReferenceIDs(role)
        for node in nodes:
            p.AddNodeReferenceID(role, node.GetID() if node else "")

    @staticmethod
    def _setCheckedNodes(selector, nodes):
        ids = {n.GetID() for n in nodes if n is not None}
        wasBlocked = selector.blockSignals(True)
        for i in range(selector.nodeCount()):
            node = selector.nodeFromIndex(i)
            selector.setCheckState(node, qt.Qt.Checked if node.GetID() in ids else qt.Qt.Unchecked)
        selector.blockSignals(wasBlocked)

    # ------------------------------------------------------------------ labeled pairs
    def onLabeledVolumeChanged(self, node):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._parameterNode.SetNodeReferenceID(CURRENT_VOLUME_ROLE, node.GetID() if node else None)
        if node is not None and self.ui.labeledSegmentationSelector.currentNode() is None:
            # propose the segmentation drawn on this volume
            for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
                if seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is node:
                    self.ui.labeledSegmentationSelector.setCurrentNode(seg)
                    break

    def onLabeledSegmentationChanged(self, node):
        if self._parameterNode is not None and not self._updatingGUIFromParameterNode:
            self._parameterNode.SetNodeReferenceID(CURRENT_SEGMENTATION_ROLE, node.GetID() if node else None)
        listWidget = self.ui.segmentsListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        if node is not None:
            segmentation = node.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                segmentId = segmentation.GetNthSegmentID(i)
                item = qt.QListWidgetItem(segmentation.GetSegment(segmentId).GetName())
                item.setData(qt.Qt.UserRole, segmentId)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked)
                listWidget.addItem(item)
        listWidget.blockSignals(wasBlocked)
        self.updateButtonStates()

    def _checkedSegmentIds(self):
        listWidget = self.ui.segmentsListWidget
        return [listWidget.item(i).data(qt.Qt.UserRole) for i in range(listWidget.count)
                if listWidget.item(i).checkState() == qt.Qt.Checked]

    def labeledPairs(self):
        """The stored pairs (``CPCSAMLib.slicer.pairs.LabeledPair``); a deleted node reads as None."""
        return cpcsamPairs.labeled_pairs(self._parameterNode)

    def onAddPair(self):
        volume = self.ui.labeledVolumeSelector.currentNode()
        segmentation = self.ui.labeledSegmentationSelector.currentNode()
        segmentIds = self._checkedSegmentIds()
        if volume is None or segmentation is None or not segmentIds:
            return
        cpcsamPairs.add_pair(self._parameterNode, volume, segmentation, segmentIds)

    def onRemovePair(self):
        cpcsamPairs.remove_pair(self._parameterNode, self.ui.labeledPairsTable.currentRow())

    def _updatePairsTable(self):
        table = self.ui.labeledPairsTable
        pairs = self.labeledPairs()
        table.setRowCount(len(pairs))
        for row, pair in enumerate(pairs):
            names = []
            if pair.segmentation is not None:
                seg = pair.segmentation.GetSegmentation()
                ids = pair.segment_ids or [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
                names = [seg.GetSegment(i).GetName() if seg.GetSegment(i) else f"({i} removed)" for i in ids]
            table.setItem(row, 0, qt.QTableWidgetItem(pair.volume.GetName() if pair.volume else "(deleted: not used)"))
            table.setItem(row, 1, qt.QTableWidgetItem(pair.segmentation.GetName() if pair.segmentation
                                                      else "(deleted: not used)"))
            table.setItem(row, 2, qt.QTableWidgetItem(", ".join(names)))

    def onUnlabeledVolumesChanged(self):
        if self._parameterNode is not None and not self._updatingGUIFromParameterNode:
            self._setReferencedNodes(UNLABELED_ROLE, self.ui.unlabeledVolumesSelector.checkedNodes())

    def onApplyVolumesChanged(self):
        if self._parameterNode is not None and not self._updatingGUIFromParameterNode:
            self._setReferencedNodes(APPLY_ROLE, self.ui.applyVolumesSelector.checkedNodes())

    def updateButtonStates(self, *args):
        if self._parameterNode is None:
            return
        running = self.run is not None and not self.run.done
        training = running and isinstance(self.run, cpcsamRuns.TrainRun)
        applying = running and isinstance(self.run, cpcsamRuns.ApplyRun)
        self.ui.addPairButton.enabled = (not running and self.ui.labeledVolumeSelector.currentNode() is not None
                                         and self.ui.labeledSegmentationSelector.currentNode() is not None
                                         and bool(self._checkedSegmentIds()))
        self.ui.removePairButton.enabled = not running and self.ui.labeledPairsTable.currentRow() >= 0
        hasPairs = bool(cpcsamPairs.complete_pairs(self.labeledPairs())[0])
        problems = self.environmentProblems()
        self.ui.trainButton.enabled = training or (not running and hasPairs and not problems)
        self.ui.trainButton.text = "Cancel training" if training else "Train"
        self.ui.trainButton.toolTip = ("Stop training (a checkpoint is saved first)." if training else
                                       "Export the data and train CPC-SAM in a background process.")
        modelPath = self._parameterNode.GetParameter("ModelPath")
        self.ui.applyButton.enabled = applying or (not running and bool(modelPath) and os.path.isfile(modelPath)
                                                   and bool(self._referencedNodes(APPLY_ROLE)))
        self.ui.applyButton.text = "Cancel" if applying else "Apply"
        self.ui.openJobFolderButton.enabled = bool(self.logic.lastOutputDirectory) and os.path.isdir(
            self.logic.lastOutputDirectory or "")
        if problems:
            self.ui.statusLabel.text = " ".join(problems)
        elif not running and not hasPairs:
            self.ui.statusLabel.text = "Add at least one labeled pair (a volume and its segmentation)."

    # ------------------------------------------------------------------ dependencies
    def engineBackbone(self):
        label = self._parameterNode.GetParameter("Backbone") if self._parameterNode else "LiteMedSAM"
        return cpcsamProcess.BACKBONES.get(label, label)

    def environmentProblems(self):
        """Why this Slicer cannot train the chosen backbone (checked at start and on every change)."""
        return cpcsamInstall.check_environment(sys.version_info, (slicer.app.majorVersion, slicer.app.minorVersion),
                                               backbone=self.engineBackbone())

    def updateDependencyStatus(self):
        problems = self.environmentProblems()
        missing = cpcsamInstall.missing_packages(backbone=self.engineBackbone())
        if problems:
            self.ui.dependenciesLabel.text = "<span style='color:#c00'>" + " ".join(problems) + "</span>"
        elif missing:
            self.ui.dependenciesLabel.text = "Missing or too old Python packages: " + ", ".join(missing)
        else:
            self.ui.dependenciesLabel.text = "Python packages: all installed."
        self.ui.installDependenciesButton.visible = bool(missing)
        return not missing and not problems

    def onInstallDependencies(self):
        backbone = self.engineBackbone()
        plan = cpcsamInstall.install_plan(backbone=backbone)
        if not plan:
            self.updateDependencyStatus()
            return not cpcsamInstall.missing_packages(backbone=backbone)
        if not slicer.util.confirmOkCancelDisplay(cpcsamInstall.describe_plan(plan), "CPC-SAM dependencies"):
            return False

        def log(text):
            self.appendLog(text)
            self.ui.statusLabel.text = text
            slicer.app.processEvents()  # show each step before pip blocks

        try:
            with slicer.util.WaitCursor():
                cpcsamInstall.run_plan(plan, pip_install=slicer.util.pip_install,
                                       install_torch=CPCSAMLogic.installTorchWithPyTorchExtension, log=log)
        except RuntimeError as exc:
            slicer.util.errorDisplay("Installing the Python packages failed.", detailedText=str(exc))
            return False
        finally:
            self.updateDependencyStatus()
        return not cpcsamInstall.missing_packages(backbone=backbone)

    # ------------------------------------------------------------------ training
    def trainingOptions(self):
        """The engine's training options (TrainConfig names, JSON types) from the panel's widgets."""
        options = {field: kind(getattr(self.ui, widget).value if kind is not bool else getattr(self.ui, widget).checked)
                   for widget, field, kind in TRAIN_FIELDS}
        options["backbone"] = self.engineBackbone()
        options["device"] = cpcsamProcess.DEVICES.get(self.ui.deviceComboBox.currentText, "auto")
        if options["backbone"] != "litemedsam":
            options["sam_checkpoint"] = self.ui.samCheckpointPathLineEdit.currentPath or None
        if self.ui.maxMinutesSpinBox.value > 0:
            options["max_minutes"] = float(self.ui.maxMinutesSpinBox.value)
        return options

    def onTrainButton(self):
        if isinstance(self.run, cpcsamRuns.TrainRun) and not self.run.done:
            self.ui.statusLabel.text = "Cancelling: the engine saves a checkpoint, then stops..."
            self.run.cancel(timeout=60.0)
            return
        if self.run is not None and not self.run.done:
            return  # another run (Apply) is going on: one at a time
        problems = self.environmentProblems()
        if problems:
            slicer.util.errorDisplay(" ".join(problems))
            return
        if cpcsamInstall.missing_packages(backbone=self.engineBackbone()) and not self.onInstallDependencies():
            return
        pairs, incomplete = cpcsamPairs.complete_pairs(self.labeledPairs())
        if incomplete:
            self.appendLog(f"{len(incomplete)} labeled pair(s) lost a deleted node and are not used.")
        validation = []
        if self.ui.validationCheckBox.checked and len(pairs) >= 2:
            validation = [pairs[-1]]
            pairs = pairs[:-1]
        unlabeled = [v for v in self._referencedNodes(UNLABELED_ROLE) if v is not None]
        outputDir = self._parameterNode.GetParameter("OutputDirectory") or None
        if outputDir:
            # one job folder per run inside the chosen folder, never mixed with an earlier run
            outputDir = os.path.join(outputDir, time.strftime("CPCSAM-%Y%m%d-%H%M%S"))
        self.ui.logTextEdit.clear()
        try:
            self.startRun(self.logic.startTraining(pairs, unlabeled, outputDir=outputDir, validation=validation,
                                                   **self.trainingOptions()))
        except InputError as exc:
            slicer.util.errorDisplay(f"Cannot train: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - anything else is shown, not swallowed
            logging.exception("CPC-SAM training did not start")
            slicer.util.errorDisplay("Training did not start.", detailedText=str(exc))
            return
        self.ui.progressBar.setRange(0, 0)  # busy until the export reports its size
        self.ui.lossLabel.text = "Loss: -"
        self.ui.diceLabel.text = "Validation Dice: -"
        self.ui.statusLabel.text = f"Exporting the data to {self.logic.lastOutputDirectory} ..."

    # ------------------------------------------------------------------ runs (training, apply)
    def startRun(self, run):
        self.run = run
        self.timer.start()
        self.updateButtonStates()

    def onTimer(self):
        run = self.run
        if run is None:
            self.timer.stop()
            return
        for item in run.step():
            self.showProgress(item)
        if run.done:
            self.timer.stop()
            self.onRunFinished(run)
            self.updateButtonStates()

    def showProgress(self, item):
        kind = item.get("event")
        if kind == "log":
            self.appendLog(item.get("line", ""))
        elif kind == "export":
            self.ui.progressBar.setRange(0, int(item.get("total") or 1))
            self.ui.progressBar.value = int(item.get("done") or 0)
            self.ui.statusLabel.text = f"Exporting ({item.get('phase')}): {item.get('name')}"
        elif kind == "apply":
            self.ui.progressBar.setRange(0, int(item.get("total") or 1))
            self.ui.progressBar.value = int(item.get("done") or 0)
            verb = "Segmenting" if item.get("phase") == "segmenting" else "Loaded"
            self.ui.statusLabel.text = f"{verb} {item.get('name')} ({item.get('done')}/{item.get('total')})"
            if item.get("segmentation"):
                self.appendLog(f"{item.get('name')}: result in '{item.get('segmentation')}'")
        elif kind == "started":
            self.ui.progressBar.setRange(0, 0)  # busy while the embeddings are computed
            self.ui.statusLabel.text = (f"Training on {item.get('device', '?')}: {item.get('num_labeled', '?')} labeled, "
                                        f"{item.get('num_unlabeled', '?')} unlabeled slices, classes "
                                        f"{', '.join(item.get('classes') or [])}. Preparing...")
            if item.get("axis") is not None:
                self.appendLog(f"Slicing axis: {'xyz'[item['axis']]} ({item.get('axis_reason')})")
        elif kind == "caching":
            # embedding phase (frozen encoder): {"done", "total"} slices
            self.ui.progressBar.setRange(0, int(item.get("total") or 1))
            self.ui.progressBar.value = int(item.get("done") or 0)
            self.ui.statusLabel.text = f"Computing image embeddings: {item.get('done')}/{item.get('total')} slices"
        elif kind == "cached":
            self.appendLog(f"Embeddings ready: {item.get('slices')} slices in {item.get('seconds')} s")
        elif kind == "horizon":
            self.appendLog(f"Time limit: the schedule is sized to {item.get('horizon')} iterations "
                           f"({item.get('seconds_per_iteration')} s each)")
        elif kind == "iteration":
            self.ui.progressBar.setRange(0, int(item.get("iterations") or 1))
            self.ui.progressBar.value = int(item.get("iteration", 0))
            parts = [f"{key} {item[key]:.4f}" for key in ("loss", "loss_s", "loss_cross", "loss_c")
                     if isinstance(item.get(key), (int, float))]
            self.ui.lossLabel.text = "Loss: " + ", ".join(parts)
            eta = self.run.eta.text() if isinstance(self.run, cpcsamRuns.TrainRun) else ""
            self.ui.statusLabel.text = (f"Iteration {item.get('iteration')}/{item.get('iterations')}"
                                        + (f", {eta}" if eta else ""))
        elif kind == "validation":
            perClass = item.get("dice_per_class") or {}
            details = ", ".join(f"{name} {value:.3f}" for name, value in perClass.items()
                                if isinstance(value, (int, float)))
            dice = item.get("dice")
            diceText = f"{dice:.3f}" if isinstance(dice, (int, float)) else "-"
            self.ui.diceLabel.text = (f"Validation Dice: {diceText} at iteration {item.get('iteration')}"
                                      + (" (best)" if item.get("best") else "") + (f" [{details}]" if details else ""))
        elif kind == "checkpoint":
            self.appendLog(f"Checkpoint ({item.get('kind')}): {item.get('path')}")
        elif kind == "finished":
            self.appendLog(f"Finished: {item.get('status')}, best Dice {item.get('best_dice')}")
        elif kind == "error":
            self.appendLog(f"Error ({item.get('type')}): {item.get('message')}")

    def onRunFinished(self, run):
        """Report the end of a run. Works when the scene was closed meanwhile (no parameter node)."""
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 1 if run.succeeded else 0
        if isinstance(run, cpcsamRuns.TrainRun):
            modelPath = str(run.model_path)
            if os.path.isfile(modelPath):
                self.setModelPath(modelPath)  # before anything that can fail
            if run.succeeded:
                self.ui.statusLabel.text = f"Training finished. Model: {modelPath}"
            elif run.cancelled:
                last = str(run.last_checkpoint)
                self.ui.statusLabel.text = ("Training cancelled." + (f" Best model: {modelPath}." if os.path.isfile(modelPath) else "")
                                            + (f" Last checkpoint: {last}" if os.path.isfile(last) else ""))
            else:
                self.ui.statusLabel.text = "Training failed."
                slicer.util.errorDisplay("CPC-SAM training failed.", detailedText=str(run.error))
        else:
            if run.results:
                self.ui.show3DButton.setSegmentationNode(run.results[-1])
            names = ", ".join(r.GetName() for r in run.results)
            if run.succeeded:
                self.ui.statusLabel.text = f"Segmented: {names}"
            elif run.cancelled:
                self.ui.statusLabel.text = "Segmentation cancelled." + (f" Done: {names}" if names else "")
            else:
                self.ui.statusLabel.text = "Segmentation failed."
                slicer.util.errorDisplay("CPC-SAM segmentation failed.", detailedText=str(run.error))

    def setModelPath(self, modelPath):
        """The trained model becomes the panel's model and the newest entry of the path history,
        where the Segment Editor effect finds it."""
        self.logic.latestModelPath = modelPath
        self.ui.modelPathLineEdit.currentPath = modelPath
        self.ui.modelPathLineEdit.addCurrentPathToHistory()
        if self._parameterNode is not None:
            self._parameterNode.SetParameter("ModelPath", modelPath)
        self.appendLog(f"Model: {modelPath}")

    def onOpenJobFolder(self):
        folder = self.logic.lastOutputDirectory
        if folder and os.path.isdir(folder):
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(folder))

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(str(text))

    # ------------------------------------------------------------------ apply
    def onApplyButton(self):
        if isinstance(self.run, cpcsamRuns.ApplyRun) and not self.run.done:
            self.ui.statusLabel.text = "Cancelling the segmentation..."
            self.run.cancel()
            return
        if self.run is not None and not self.run.done:
            return  # training is going on: one run at a time
        modelPath = self._parameterNode.GetParameter("ModelPath")
        device = cpcsamProcess.DEVICES.get(self._parameterNode.GetParameter("Device"), "auto")
        volumes = [v for v in self._referencedNodes(APPLY_ROLE) if v is not None]
        output = self.ui.outputSegmentationSelector.currentNode()
        if output is not None and len(volumes) > 1:
            slicer.util.errorDisplay("An output segmentation can be chosen for one volume only; with several "
                                     "volumes, each gets its own (reused on a rerun).")
            return
        try:
            run = self.logic.startApply(modelPath, volumes, device=device,
                                        outputs={volumes[0].GetID(): output} if output is not None else None,
                                        selfPrompt=self.ui.selfPromptCheckBox.checked)
        except InputError as exc:
            slicer.util.errorDisplay(f"Cannot segment: {exc}")
            return
        self.startRun(run)


#
# CPCSAMLogic
#

class CPCSAMLogic(ScriptedLoadableModuleLogic):
    """Export, train, apply. Delegates to the Qt-free ``CPCSAMLib.slicer`` (tested with pytest).

    ``scene`` and ``segmentationsLogic`` default to Slicer's (``slicer.mrmlScene``,
    ``slicer.modules.segmentations.logic()``); they can be given for use outside the GUI.
    """

    def __init__(self, scene=None, segmentationsLogic=None, pythonExecutable=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self._segmentationsLogic = segmentationsLogic
        self.pythonExecutable = pythonExecutable
        self.run = None
        self.lastOutputDirectory = None
        self.latestModelPath = None  #: kept by the logic, so closing the scene does not lose it

    # -------------------------------------------------------------- context
    @property
    def scene(self):
        return self._scene if self._scene is not None else slicer.mrmlScene

    @property
    def segmentationsLogic(self):
        if self._segmentationsLogic is None:
            self._segmentationsLogic = slicer.modules.segmentations.logic()
        return self._segmentationsLogic

    def setDefaultParameters(self, parameterNode):
        for name, value in DEFAULT_PARAMETERS.items():
            if not parameterNode.GetParameter(name):
                if name == "ModelPath" and self.latestModelPath:
                    value = self.latestModelPath  # a model trained before the scene was closed
                if isinstance(value, bool):
                    value = "true" if value else "false"
                parameterNode.SetParameter(name, str(value))

    @staticmethod
    def engineEnvironment():
        """Environment of the engine process: ``CPCSAMLib`` importable, unbuffered output."""
        env = os.environ.copy()
        paths = [ENGINE_PARENT_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def enginePython(self):
        return self.pythonExecutable or cpcsamProcess.default_python_executable()

    @staticmethod
    def defaultOutputDirectory():
        base = None
        app = getattr(slicer, "app", None)
        if app is not None:
            base = getattr(app, "defaultScenePath", None)
        base = base or tempfile.gettempdir()
        return os.path.join(base, "CPCSAM", time.strftime("%Y%m%d-%H%M%S"))

    @staticmethod
    def installTorchWithPyTorchExtension(torchVersionRequirement=cpcsamInstall.TORCH_VERSION_REQUIREMENT):
        """Install torch with the PyTorch extension (build matching the GPU/CUDA); returns torch or None."""
        import PyTorchUtils

        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=torchVersionRequirement)

    # -------------------------------------------------------------- training
    def startTraining(self, labeled, unlabeled=(), outputDir=None, validation=None, **options):
        """A :class:`CPCSAMLib.slicer.runs.TrainRun` (export, then the engine in the background).

        ``options``: the engine's training options by their ``TrainConfig`` names, with JSON
        types (``iterations=300, batch_size=4, freeze_encoder=True, max_minutes=30.0, ...``);
        checked before anything is exported. Step the run (``run.step()``) until ``run.done``.
        """
        outputDir = str(outputDir or self.defaultOutputDirectory())
        labeled = [tuple(p) if len(p) == 3 else (p[0], p[1], None) for p in labeled]
        validation = [tuple(p) if len(p) == 3 else (p[0], p[1], None) for p in (validation or [])]
        self.run = cpcsamRuns.TrainRun(self.scene, self.segmentationsLogic, labeled, list(unlabeled or []),
                                       outputDir, options, validation=validation,
                                       python_executable=self.enginePython(), env=self.engineEnvironment())
        self.lastOutputDirectory = outputDir
        return self.run

    def train(self, labeled, unlabeled=(), outputDir=None, waitForCompletion=True, validation=None,
              progressCallback=None, **options):
        """Console API: train and return the path of ``model_best.pt``.

        ``labeled``: ``[(volumeNode, segmentationNode[, segmentIds]), ...]``; ``unlabeled``:
        volume nodes; ``options``: TrainConfig names (see :meth:`startTraining`). With
        ``waitForCompletion=False`` the run is returned (step it, or ``cancel()`` it). Raises
        ``RuntimeError`` with the engine's message on failure.
        """
        run = self.startTraining(labeled, unlabeled, outputDir, validation, **options)
        if not waitForCompletion:
            return run

        def onItem(item):
            if progressCallback is not None:
                progressCallback(item)
            elif item.get("event") in ("started", "validation", "finished", "error"):
                logging.info(f"CPC-SAM {item}")

        cpcsamRuns.run_to_end(run, on_item=onItem, interval=0.2, on_poll=self._processEvents)
        if not run.succeeded:
            raise RuntimeError(f"CPC-SAM training {'was cancelled' if run.cancelled else 'failed'}: {run.error}")
        self.latestModelPath = str(run.model_path)
        return str(run.model_path)

    @staticmethod
    def _processEvents():
        """Keep Slicer's GUI alive while the console API waits (no-op outside the application)."""
        app = getattr(slicer, "app", None)
        if app is not None:
            app.processEvents()

    def cancel(self):
        if self.run is not None and not self.run.done:
            self.run.cancel()

    # -------------------------------------------------------------- inference
    def modelClasses(self, modelPath):
        """``[{"name", "value"[, "color", "terminology"]}]`` of a model (job.json next to it, else its card)."""
        try:
            return cpcsamMrml.model_classes(modelPath)
        except InputError:
            from CPCSAMLib.checkpoint import load_checkpoint

            card = load_checkpoint(modelPath)["model_card"]
            return [{"name": c["name"], "value": int(c["value"])} for c in card["classes"]]

    def startApply(self, modelPath, volumes, device="auto", outputs=None, selfPrompt=None):
        """A :class:`CPCSAMLib.slicer.runs.ApplyRun`: each volume segmented in a background process.

        ``outputs``: ``{volume ID: segmentation node}`` for chosen outputs; otherwise the result
        of the volume's previous run is reused, else a new segmentation is made. ``selfPrompt``:
        True/False to choose self-prompted inference, None for the engine's default.
        """
        if not modelPath or not os.path.isfile(str(modelPath)):
            raise InputError(f"Model file {modelPath!r} does not exist.")
        self.run = cpcsamRuns.ApplyRun(self.scene, self.segmentationsLogic, modelPath, list(volumes),
                                       self.modelClasses(modelPath), device=cpcsamProcess.DEVICES.get(device, device),
                                       outputs=outputs, python_executable=self.enginePython(),
                                       env=self.engineEnvironment(), self_prompt=selfPrompt)
        return self.run

    def apply(self, modelPath, volumeNode, segmentationNode=None, device="auto", overwrite=False, name=None,
              selfPrompt=None):
        """Console API: segment ``volumeNode`` with a trained model; returns the segmentation node.

        Runs ``python -m CPCSAMLib predict`` in a background process. The result goes into
        ``segmentationNode`` (which must be empty, or ``overwrite=True``), else into the
        volume's previous CPC-SAM result (reused), else a new node (named ``name``).
        """
        cpcsamMrml.validate_volume(volumeNode, "volume to segment")
        cpcsamMrml.check_target_segmentation(segmentationNode, overwrite)  # before any computation
        if segmentationNode is None and name and cpcsamMrml.previous_result(volumeNode) is None:
            segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
        outputs = {volumeNode.GetID(): segmentationNode} if segmentationNode is not None else None
        run = self.startApply(modelPath, [volumeNode], device=device, outputs=outputs, selfPrompt=selfPrompt)
        cpcsamRuns.run_to_end(run, interval=0.1, on_poll=self._processEvents)
        if not run.succeeded:
            raise RuntimeError(f"CPC-SAM prediction failed: {run.error}")
        return run.results[0]


#
# CPCSAMTest
#

class CPCSAMTest(ScriptedLoadableModuleTest):
    """Self-test: a tiny synthetic labeled volume and segmentation, 2 training iterations, apply.

    It checks the plumbing (export, background training, prediction, import), not accuracy.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CPCSAM_train_and_apply()

    def _syntheticVolume(self, name, centre, radius):
        import numpy as np

        yy, xx = np.mgrid[0:96, 0:96]
        disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius ** 2
        rng = np.random.default_rng(len(name))
        image = (40 + 10 * rng.random((1, 96, 96)) + 120 * disk[None]).astype(np.uint8)
        volume = slicer.util.addVolumeFromArray(image, name=name)
        return volume, disk[None].astype(np.uint8)

    def test_CPCSAM_train_and_apply(self):
        self.delayDisplay("Creating a synthetic labeled volume and segmentation")
        volume, disk = self._syntheticVolume("CPCSAMTestLabeled", (40, 50), 18)
        unlabeled, _ = self._syntheticVolume("CPCSAMTestUnlabeled", (55, 45), 15)
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        slicer.util.updateVolumeFromArray(labelmap, disk)
        labelmap.CopyOrientation(volume)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "CPCSAMTestSegmentation")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segmentation.GetSegmentation().GetNthSegment(0).SetName("disk")
        slicer.mrmlScene.RemoveNode(labelmap)

        logic = CPCSAMLogic()
        problems = cpcsamInstall.check_environment(sys.version_info, (slicer.app.majorVersion, slicer.app.minorVersion),
                                                   backbone="litemedsam")
        if problems:
            self.delayDisplay(f"Skipping training: {' '.join(problems)}")
            return
        missing = cpcsamInstall.missing_packages(backbone="litemedsam")
        if missing:
            self.delayDisplay(f"Skipping training: missing Python packages {missing}")
            return
        outputDir = os.path.join(slicer.app.temporaryPath, "CPCSAMSelfTest", time.strftime("%Y%m%d-%H%M%S"))
        self.delayDisplay("Training 2 iterations (CPU)")
        modelPath = logic.train([(volume, segmentation)], [unlabeled], outputDir=outputDir, iterations=2,
                                batch_size=2, val_every=2, device="cpu")
        self.assertTrue(os.path.isfile(modelPath))
        self.assertTrue(os.path.isfile(os.path.join(outputDir, "manifest.json")))

        self.delayDisplay("Applying the model")
        before = len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode"))
        result = logic.apply(modelPath, unlabeled, device="CPU")
        self.assertIsNotNone(result)
        self.assertTrue(result.IsA("vtkMRMLSegmentationNode"))
        self.assertEqual(len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")), before + 1)
        self.assertEqual(result.GetSegmentation().GetNumberOfSegments(), 1)
        self.assertEqual(result.GetSegmentation().GetNthSegment(0).GetName(), "disk")

        self.delayDisplay("Never overwriting: applying into a segmentation with segments fails")
        with self.assertRaises(InputError):
            logic.apply(modelPath, unlabeled, segmentationNode=segmentation, device="CPU")
        self.delayDisplay("Test passed")
