"""CPC-SAM: semi-supervised fine-tuning of SAM in 3D Slicer (module, panel, logic, self-test).

The widget is thin: it loads ``Resources/UI/CPCSAM.ui``, keeps the user's choices in the
module's parameter node and forwards to :class:`CPCSAMLogic`, which delegates to the Qt-free
engine package ``CPCSAMLib`` (``mrml``: export/import of MRML nodes, ``process``: the engine in a
background process, ``install``: Python dependencies). Training runs in a separate process
(``PythonSlicer -m CPCSAMLib train``), so Slicer stays responsive and a crash or a cancel never
takes the application down.

Console API (Slicer's Python console)::

    logic = slicer.util.getModuleLogic("CPCSAM")
    model = logic.train(labeled=[(volumeNode, segmentationNode)], unlabeled=[otherVolume],
                        iterations=300, batchSize=4)          # blocks; returns model_best.pt
    segmentationNode = logic.apply(model, otherVolume)         # a new segmentation node
"""

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

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

#: Parameter node defaults: the paper's settings (Miao et al., MICCAI 2024) and LiteMedSAM.
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
    ("outputDirectoryPathLineEdit", "OutputDirectory", "path"),
    ("modelPathLineEdit", "ModelPath", "path"),
)

#: Parameter -> train option (CPCSAMLib.process.train_options names).
TRAIN_OPTION_PARAMETERS = {
    "Backbone": "backbone",
    "SAMCheckpoint": "samCheckpoint",
    "Device": "device",
    "Iterations": "iterations",
    "BatchSize": "batchSize",
    "LearningRate": "learningRate",
    "LambdaCross": "lambdaCross",
    "LambdaConsistency": "lambdaConsistency",
    "LoraRank": "loraRank",
    "ValidationEvery": "valEvery",
    "FastCPUMode": "freezeEncoder",
}

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
        self.process = None
        self.timer = None
        self._trainingOutput = None

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

        self.ui.labeledPairsTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.initializeParameterNode()
        self.updateDependencyStatus()

    def cleanup(self):
        """Called when the application closes and the module widget is destroyed."""
        if self.process is not None and self.process.is_running():
            self.process.cancel(timeout=10.0, block=True)
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
        running = self.process is not None and not self.process.done
        self.ui.addPairButton.enabled = (not running and self.ui.labeledVolumeSelector.currentNode() is not None
                                         and self.ui.labeledSegmentationSelector.currentNode() is not None
                                         and bool(self._checkedSegmentIds()))
        self.ui.removePairButton.enabled = not running and self.ui.labeledPairsTable.currentRow() >= 0
        hasPairs = bool(cpcsamPairs.complete_pairs(self.labeledPairs())[0])
        self.ui.trainButton.enabled = running or hasPairs
        self.ui.trainButton.text = "Cancel" if running else "Train"
        self.ui.trainButton.toolTip = ("Stop training (a checkpoint is saved first)." if running else
                                       "Export the data and train CPC-SAM in a background process.")
        modelPath = self._parameterNode.GetParameter("ModelPath")
        self.ui.applyButton.enabled = (not running and bool(modelPath) and os.path.isfile(modelPath)
                                       and bool(self._referencedNodes(APPLY_ROLE)))
        if not running and not hasPairs:
            self.ui.statusLabel.text = "Add at least one labeled pair (a volume and its segmentation)."

    # ------------------------------------------------------------------ dependencies
    def updateDependencyStatus(self):
        missing = cpcsamInstall.missing_packages()
        if missing:
            self.ui.dependenciesLabel.text = "Missing Python packages: " + ", ".join(missing)
            self.ui.installDependenciesButton.visible = True
        else:
            self.ui.dependenciesLabel.text = "Python packages: all installed."
            self.ui.installDependenciesButton.visible = False
        return not missing

    def onInstallDependencies(self):
        plan = cpcsamInstall.install_plan()
        if not plan:
            self.updateDependencyStatus()
            return True
        if not slicer.util.confirmOkCancelDisplay(cpcsamInstall.describe_plan(plan), "CPC-SAM dependencies"):
            return False
        try:
            with slicer.util.WaitCursor():
                cpcsamInstall.run_plan(plan, pip_install=slicer.util.pip_install,
                                       install_torch=CPCSAMLogic.installTorchWithPyTorchExtension,
                                       log=self.appendLog)
        except RuntimeError as exc:
            slicer.util.errorDisplay(str(exc))
            return False
        finally:
            self.updateDependencyStatus()
        return not cpcsamInstall.missing_packages()

    # ------------------------------------------------------------------ training
    def trainingOptions(self):
        p = self._parameterNode
        options = {option: p.GetParameter(parameter) for parameter, option in TRAIN_OPTION_PARAMETERS.items()}
        if not options["samCheckpoint"]:
            options["samCheckpoint"] = None
        return options

    def onTrainButton(self):
        if self.process is not None and not self.process.done:
            self.onCancel()
            return
        if cpcsamInstall.missing_packages() and not self.onInstallDependencies():
            return
        pairs, incomplete = cpcsamPairs.complete_pairs(self.labeledPairs())
        if incomplete:
            self.appendLog(f"{len(incomplete)} labeled pair(s) lost a deleted node and are not used.")
        validation = []
        if self._parameterNode.GetParameter("Validation") == "true" and len(pairs) >= 2:
            validation = [pairs[-1]]
            pairs = pairs[:-1]
        unlabeled = self._referencedNodes(UNLABELED_ROLE)
        outputDir = self._parameterNode.GetParameter("OutputDirectory") or None
        if outputDir:
            # one job folder per run inside the chosen folder, never mixed with an earlier run
            outputDir = os.path.join(outputDir, time.strftime("CPCSAM-%Y%m%d-%H%M%S"))
        self.ui.logTextEdit.clear()
        try:
            with slicer.util.WaitCursor():
                self.process = self.logic.startTraining(pairs, unlabeled, outputDir=outputDir,
                                                        validation=validation, **self.trainingOptions())
        except InputError as exc:
            slicer.util.errorDisplay(f"Cannot train: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - anything else is shown, not swallowed
            logging.exception("CPC-SAM training did not start")
            slicer.util.errorDisplay(f"Training did not start: {exc}")
            return
        self._trainingOutput = self.logic.lastOutputDirectory
        self.ui.progressBar.setRange(0, int(self._parameterNode.GetParameter("Iterations") or 1))
        self.ui.progressBar.value = 0
        self.ui.lossLabel.text = "Loss: -"
        self.ui.diceLabel.text = "Validation Dice: -"
        self.ui.statusLabel.text = f"Training started. Job folder: {self._trainingOutput}"
        self.appendLog(" ".join(self.process.full_command))
        self.timer.start()
        self.updateButtonStates()

    def onCancel(self):
        if self.process is None:
            return
        self.ui.statusLabel.text = "Cancelling: the engine saves a checkpoint, then stops..."
        self.process.cancel(timeout=60.0, block=False)

    def onTimer(self):
        if self.process is None:
            self.timer.stop()
            return
        for item in self.process.poll():
            self.showProgress(item)
        if self.process.done:
            for item in self.process.poll():
                self.showProgress(item)
            self.timer.stop()
            self.onTrainingFinished()

    def showProgress(self, item):
        kind = item.get("event")
        if kind == "log":
            self.appendLog(item.get("line", ""))
        elif kind == "started":
            self.ui.progressBar.setRange(0, int(item.get("iterations") or 1))
            self.ui.statusLabel.text = (f"Training on {item.get('device', '?')}: {item.get('num_labeled', '?')} labeled, "
                                        f"{item.get('num_unlabeled', '?')} unlabeled slices, classes "
                                        f"{', '.join(item.get('classes') or [])}.")
        elif kind == "iteration":
            self.ui.progressBar.value = int(item.get("iteration", 0))
            parts = [f"{key} {item[key]:.4f}" for key in ("loss", "loss_s", "loss_cross", "loss_c")
                     if isinstance(item.get(key), (int, float))]
            self.ui.lossLabel.text = "Loss: " + ", ".join(parts)
            seconds = item.get("seconds")
            if isinstance(seconds, (int, float)):
                self.ui.statusLabel.text = (f"Iteration {item.get('iteration')}/{item.get('iterations')} "
                                            f"({seconds:.1f} s)")
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

    def onTrainingFinished(self):
        process = self.process
        modelPath = os.path.join(self._trainingOutput or "", "model", "model_best.pt")
        if process.succeeded:
            self.ui.statusLabel.text = f"Training finished. Model: {modelPath}"
            if os.path.isfile(modelPath):
                self._parameterNode.SetParameter("ModelPath", modelPath)
        elif process.cancelled:
            lastPath = os.path.join(self._trainingOutput or "", "model", "model_last.pt")
            self.ui.statusLabel.text = "Training cancelled." + (f" Last checkpoint: {lastPath}" if os.path.isfile(lastPath) else "")
            if os.path.isfile(modelPath):
                self._parameterNode.SetParameter("ModelPath", modelPath)
        else:
            self.ui.statusLabel.text = f"Training failed (exit code {process.returncode})."
            slicer.util.errorDisplay(f"CPC-SAM training failed:\n{process.error_message}")
        self.updateButtonStates()

    def appendLog(self, text):
        self.ui.logTextEdit.appendPlainText(str(text))

    # ------------------------------------------------------------------ apply
    def onApplyButton(self):
        modelPath = self._parameterNode.GetParameter("ModelPath")
        device = cpcsamProcess.DEVICES.get(self._parameterNode.GetParameter("Device"), "auto")
        volumes = [v for v in self._referencedNodes(APPLY_ROLE) if v is not None]
        results = []
        try:
            with slicer.util.WaitCursor():
                for volume in volumes:
                    self.ui.statusLabel.text = f"Segmenting {volume.GetName()}..."
                    slicer.app.processEvents()
                    results.append(self.logic.apply(modelPath, volume, device=device))
        except Exception as exc:  # noqa: BLE001
            logging.exception("CPC-SAM apply failed")
            slicer.util.errorDisplay(f"Segmentation failed: {exc}")
            return
        self.ui.statusLabel.text = "Created " + ", ".join(r.GetName() for r in results)
        if results:
            results[-1].CreateClosedSurfaceRepresentation()


#
# CPCSAMLogic
#

class CPCSAMLogic(ScriptedLoadableModuleLogic):
    """Export, train, apply. Delegates to the Qt-free ``CPCSAMLib`` (tested with pytest).

    ``scene`` and ``segmentationsLogic`` default to Slicer's (``slicer.mrmlScene``,
    ``slicer.modules.segmentations.logic()``); they can be given for use outside the GUI.
    """

    def __init__(self, scene=None, segmentationsLogic=None, pythonExecutable=None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._scene = scene
        self._segmentationsLogic = segmentationsLogic
        self.pythonExecutable = pythonExecutable
        self.process = None
        self.lastOutputDirectory = None

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
    def installTorchWithPyTorchExtension():
        """Install torch with the PyTorch extension (matching GPU/CUDA build); returns torch or None."""
        import PyTorchUtils

        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)

    # -------------------------------------------------------------- training
    def exportJob(self, labeled, unlabeled=(), outputDir=None, validation=None, config=None):
        """Write the job folder (images, labels, manifest.json, job.json); returns the manifest path."""
        outputDir = outputDir or self.defaultOutputDirectory()
        labeled = [tuple(p) if len(p) == 3 else (p[0], p[1], None) for p in labeled]
        validation = [tuple(p) if len(p) == 3 else (p[0], p[1], None) for p in (validation or [])]
        return cpcsamMrml.export_job(self.scene, self.segmentationsLogic, labeled, list(unlabeled or []),
                                     outputDir, config or {}, validation=validation)

    def startTraining(self, labeled, unlabeled=(), outputDir=None, validation=None, **options):
        """Export the job and start the engine in the background; returns the EngineProcess.

        ``options``: training options (``iterations``, ``batchSize``, ``learningRate``,
        ``lambdaCross``/``lambda1``, ``lambdaConsistency``/``lambda2``, ``loraRank``,
        ``backbone``, ``samCheckpoint``, ``device``, ``valEvery``, ...).
        """
        engineOptions = cpcsamProcess.train_options(**options)  # validated before anything is written
        outputDir = Path(outputDir or self.defaultOutputDirectory())
        manifest = self.exportJob(labeled, unlabeled, outputDir, validation, config=dict(engineOptions))
        modelDir = outputDir / "model"
        events = modelDir / "events.jsonl"
        args = cpcsamProcess.train_arguments(manifest, modelDir, events, engineOptions)
        self.process = cpcsamProcess.EngineProcess(args, events_path=events, python_executable=self.enginePython(),
                                                   env=self.engineEnvironment(), cwd=str(outputDir))
        self.lastOutputDirectory = str(outputDir)
        self.process.start()
        return self.process

    def train(self, labeled, unlabeled=(), outputDir=None, waitForCompletion=True, validation=None,
              progressCallback=None, **options):
        """Console API: train and return the path of ``model_best.pt``.

        ``labeled``: ``[(volumeNode, segmentationNode[, segmentIds]), ...]``; ``unlabeled``:
        volume nodes. With ``waitForCompletion=False`` the running EngineProcess is returned
        (poll it, or ``cancel()`` it). Raises ``RuntimeError`` with the engine's message on failure.
        """
        process = self.startTraining(labeled, unlabeled, outputDir, validation, **options)
        if not waitForCompletion:
            return process

        def onItem(item):
            if progressCallback is not None:
                progressCallback(item)
            elif item.get("event") == "iteration":
                logging.info(f"CPC-SAM iteration {item.get('iteration')}/{item.get('iterations')} "
                             f"loss {item.get('loss')}")
            elif item.get("event") in ("started", "validation", "finished", "error"):
                logging.info(f"CPC-SAM {item}")

        code = process.run(on_item=onItem, interval=0.2, on_poll=self._processEvents)
        if code != 0:
            raise RuntimeError(f"CPC-SAM training failed (exit code {code}): {process.error_message}")
        return str(Path(self.lastOutputDirectory) / "model" / "model_best.pt")

    @staticmethod
    def _processEvents():
        """Keep Slicer's GUI alive while waiting for the engine (no-op outside the application)."""
        app = getattr(slicer, "app", None)
        if app is not None:
            app.processEvents()

    def cancel(self):
        if self.process is not None:
            return self.process.cancel()
        return None

    # -------------------------------------------------------------- inference
    def modelClasses(self, modelPath):
        """``[{"name", "value"[, "color"]}]`` of a model (job.json/config.json, else its model card)."""
        try:
            return cpcsamMrml.model_classes(modelPath)
        except InputError:
            from CPCSAMLib.checkpoint import load_checkpoint

            card = load_checkpoint(modelPath)["model_card"]
            return [{"name": c["name"], "value": int(c["value"])} for c in card["classes"]]

    def apply(self, modelPath, volumeNode, segmentationNode=None, device="auto", overwrite=False, name=None):
        """Console API: segment ``volumeNode`` with a trained model; returns the segmentation node.

        The volume is written to a temporary NRRD file and segmented by ``python -m CPCSAMLib
        predict`` in a separate process; the result becomes a new segmentation node (one named,
        colored segment per class) unless ``segmentationNode`` is given (which must be empty,
        or ``overwrite=True``).
        """
        if not modelPath or not os.path.isfile(str(modelPath)):
            raise InputError(f"Model file {modelPath!r} does not exist.")
        cpcsamMrml.validate_volume(volumeNode, "volume to segment")
        cpcsamMrml.check_target_segmentation(segmentationNode, overwrite)  # before any computation
        classes = self.modelClasses(modelPath)
        with tempfile.TemporaryDirectory(prefix="CPCSAM-apply-") as tmp:
            inputPath = cpcsamMrml.export_volume(volumeNode, Path(tmp) / "input.nrrd")
            outputPath = Path(tmp) / "label.nrrd"
            args = cpcsamProcess.predict_arguments(modelPath, [inputPath], outputPath,
                                                   {"device": cpcsamProcess.DEVICES.get(device, device)})
            process = cpcsamProcess.EngineProcess(args, python_executable=self.enginePython(),
                                                  env=self.engineEnvironment(), cwd=tmp)

            code = process.run(interval=0.1, on_poll=self._processEvents)
            if code != 0:
                raise RuntimeError(f"CPC-SAM prediction failed (exit code {code}): {process.error_message}")
            return cpcsamMrml.load_result(self.scene, self.segmentationsLogic, outputPath, volumeNode, classes,
                                          segmentation_node=segmentationNode, overwrite=overwrite, name=name)


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
        missing = cpcsamInstall.missing_packages()
        if missing:
            self.delayDisplay(f"Skipping training: missing Python packages {missing}")
            return
        outputDir = os.path.join(slicer.app.temporaryPath, "CPCSAMSelfTest", time.strftime("%Y%m%d-%H%M%S"))
        self.delayDisplay("Training 2 iterations (CPU)")
        modelPath = logic.train([(volume, segmentation)], [unlabeled], outputDir=outputDir, iterations=2,
                                batchSize=2, valEvery=2, device="CPU")
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
